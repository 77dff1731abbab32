"""The golden check: a runtime must reproduce the exported signature's answers before it serves.

The export writes `golden.npz` (test images and TensorFlow's probabilities for them) into each
version; a backend that converts, lowers or quantizes the graph (OpenVINO; bf16, int8) proves
here that it still computes the same model. A version with adaptive views holds the answers of
both of its paths, every view and one view: an image near the threshold may take either path in
a lower precision, so the adaptive answer itself would not be a fair reference.
"""

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.contract import ModelLoadError, error_detail

if TYPE_CHECKING:
    from app.backends import Backend

GOLDEN_FILE = "golden.npz"

# Largest allowed |probability - golden| per precision, on probabilities in 0..1; the one place
# that says how close each precision must come to TensorFlow's float32 answers (tests use it too).
# Measured on golden.npz (64 test images), AMD EPYC Zen 4 (avx512_bf16, VNNI), OpenVINO 2026.4:
# f32: at most 1.4e-6 (and 0 for TensorFlow against itself); 1e-4 still catches a wrong graph.
# bf16: 0.018 on cifar10/2, 0.0046 on cifar10-seed/3 (8 significant bits); 0.05 is ~3x that.
# int8 (NNCF, 300 training images): 0.117 on cifar10/2, 0.062 on cifar10-seed/3, 0.185 on
# the uncalibrated cifar10/1, whose near-one probabilities move most; 0.3 leaves 1.6x that, for
# CPUs whose int8 kernels round otherwise (AVX2 without VNNI), and a wrong model still fails.
TOLERANCE = {"f32": 1e-4, "bf16": 5e-2, "int8": 0.3}


@dataclass(frozen=True)
class GoldenResult:
    """How a runtime's answers compare with the golden probabilities."""

    images: int
    top1_mismatches: int
    max_abs_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        """Every probability within the tolerance; so a top-1 label may change only where the
        golden top two are within 2 x tolerance (an int8 near-tie). A NaN difference fails."""
        return self.max_abs_diff <= self.tolerance

    def __str__(self) -> str:
        return (
            f"{self.top1_mismatches} of {self.images} top-1 differ, largest probability "
            f"difference {self.max_abs_diff:.2g} (tolerance {self.tolerance:g})"
        )


@dataclass(frozen=True)
class GoldenSet:
    version_dir: Path
    images: np.ndarray  # uint8 (K, H, W, 3)
    probabilities: np.ndarray  # float32 (K, num_labels), every view
    one_view: np.ndarray | None = None  # float32 (K, num_labels); models with adaptive views

    def check(self, runtime: "Backend", precision: str) -> GoldenResult:
        """Run the golden images through `runtime` on every path the golden set holds."""
        result = self.compare(runtime.predict(self.images), precision)
        if self.one_view is None:
            return result
        no_more_views = np.zeros(len(self.images), np.float32)
        one = compare(runtime.predict(self.images, no_more_views), self.one_view, precision)
        return GoldenResult(
            images=result.images + one.images,
            top1_mismatches=result.top1_mismatches + one.top1_mismatches,
            max_abs_diff=float(np.max([result.max_abs_diff, one.max_abs_diff])),  # NaN stays NaN
            tolerance=result.tolerance,
        )

    def compare(self, probabilities: np.ndarray, precision: str) -> GoldenResult:
        """Judge a runtime's `probabilities` for `self.images` at the tolerance of `precision`."""
        if probabilities.shape != self.probabilities.shape:
            raise ModelLoadError(
                self.version_dir,
                f"the golden images gave shape {probabilities.shape}, "
                f"golden.npz holds {self.probabilities.shape}",
            )
        return compare(probabilities, self.probabilities, precision)


def compare(probabilities: np.ndarray, expected: np.ndarray, precision: str) -> GoldenResult:
    """Judge `probabilities` against TensorFlow's float32 `expected` at `precision`'s tolerance."""
    tolerance = TOLERANCE[precision]
    diff = np.abs(probabilities.astype(np.float32) - expected)
    return GoldenResult(
        images=len(expected),
        top1_mismatches=int(np.sum(probabilities.argmax(axis=1) != expected.argmax(axis=1))),
        max_abs_diff=float(diff.max()),
        tolerance=tolerance,
    )


def read_golden(version_dir: Path, height: int, width: int, num_labels: int) -> GoldenSet | None:
    """The version's golden set, None when it has none; a malformed one is a ModelLoadError."""
    path = version_dir / GOLDEN_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:  # allow_pickle stays False: a golden set holds only arrays
            images, probabilities = data["images"], data["probabilities"]
            one_view = data["one_view"] if "one_view" in data.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(
            version_dir, f"golden.npz is unreadable ({error_detail(exc)})"
        ) from exc
    count = len(images) if images.ndim else 0
    if (
        images.dtype != np.uint8
        or images.shape != (count, height, width, 3)
        or count == 0
        or probabilities.shape != (count, num_labels)
        or (one_view is not None and one_view.shape != probabilities.shape)
    ):
        raise ModelLoadError(
            version_dir,
            f"golden.npz holds images {images.dtype} {list(images.shape)} and probabilities "
            f"{list(probabilities.shape)}, not uint8 [K, {height}, {width}, 3] and "
            f"[K, {num_labels}]",
        )
    return GoldenSet(
        version_dir,
        images,
        probabilities.astype(np.float32),
        None if one_view is None else one_view.astype(np.float32),
    )
