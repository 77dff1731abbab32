"""The golden check: a runtime must reproduce the exported signature's answers before it serves.

The export writes `golden.npz` (test images and TensorFlow's probabilities for them) into each
version; a backend that converts or lowers the graph (OpenVINO, bf16) proves here that it still
computes the same model.
"""

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.contract import ModelLoadError, error_detail

GOLDEN_FILE = "golden.npz"

# Largest allowed |probability - golden| per precision, on probabilities in 0..1.
# f32: OpenVINO against TensorFlow on models/cifar10/2 differs by at most 1.4e-6 (AMD EPYC, AVX2),
# TensorFlow against itself by 0; 1e-4 leaves a margin of ~70x and still catches a wrong graph.
# bf16: NOT measured (no bf16 CPU was at hand). bf16 keeps 8 significant bits (relative error
# up to 2^-9 per rounding), so probabilities can move by a few hundredths; a failing bf16 check
# falls back to f32, so a bound too tight costs speed, never correctness.
TOLERANCE = {"f32": 1e-4, "bf16": 5e-2}


@dataclass(frozen=True)
class GoldenResult:
    """How a runtime's answers compare with the golden probabilities."""

    images: int
    top1_mismatches: int
    max_abs_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        # Written so that a NaN difference fails.
        return self.top1_mismatches == 0 and self.max_abs_diff <= self.tolerance

    def __str__(self) -> str:
        return (
            f"{self.top1_mismatches} of {self.images} top-1 differ, largest probability "
            f"difference {self.max_abs_diff:.2g} (tolerance {self.tolerance:g})"
        )


@dataclass(frozen=True)
class GoldenSet:
    version_dir: Path
    images: np.ndarray  # uint8 (K, H, W, 3)
    probabilities: np.ndarray  # float32 (K, num_labels)

    def compare(self, probabilities: np.ndarray, precision: str) -> GoldenResult:
        """Judge a runtime's `probabilities` for `self.images` at the tolerance of `precision`."""
        if probabilities.shape != self.probabilities.shape:
            raise ModelLoadError(
                self.version_dir,
                f"the golden images gave shape {probabilities.shape}, "
                f"golden.npz holds {self.probabilities.shape}",
            )
        diff = np.abs(probabilities.astype(np.float32) - self.probabilities)
        return GoldenResult(
            images=len(self.images),
            top1_mismatches=int(
                np.sum(probabilities.argmax(axis=1) != self.probabilities.argmax(axis=1))
            ),
            max_abs_diff=float(diff.max()),
            tolerance=TOLERANCE[precision],
        )


def read_golden(version_dir: Path, height: int, width: int, num_labels: int) -> GoldenSet | None:
    """The version's golden set, None when it has none; a malformed one is a ModelLoadError."""
    path = version_dir / GOLDEN_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:  # allow_pickle stays False: a golden set holds only arrays
            images, probabilities = data["images"], data["probabilities"]
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
    ):
        raise ModelLoadError(
            version_dir,
            f"golden.npz holds images {images.dtype} {list(images.shape)} and probabilities "
            f"{list(probabilities.shape)}, not uint8 [K, {height}, {width}, 3] and "
            f"[K, {num_labels}]",
        )
    return GoldenSet(version_dir, images, probabilities.astype(np.float32))
