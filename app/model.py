"""The served model: a SavedModel version in one inference backend, checked against the contract
(docs/model-contract.md) and its golden set, in the precision app.precision settles on.

Neither TensorFlow nor OpenVINO is imported here: the backend chosen at load imports its runtime,
so the slim image serves without TensorFlow. No Keras or training code is needed either.
"""

import functools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.backends import (
    Backend,
    BackendChoice,
    PrecisionChoice,
    installed,
    load_backend,
    native_precisions,
    resolve_backend,
)
from app.contract import VIEWS_INPUT, ModelLoadError, Views, check_signature, is_version_name
from app.golden import GoldenResult, read_golden
from app.precision import plan as precision_plan

logger = logging.getLogger(__name__)


def resolve_version_dir(path: Path) -> Path:
    """A version folder as given, or the highest integer version inside a model folder."""
    if (path / "saved_model.pb").is_file():
        return path
    if not path.is_dir():
        raise ModelLoadError(path, "no such directory")
    versions = [child for child in path.iterdir() if child.is_dir() and is_version_name(child.name)]
    if not versions:
        raise ModelLoadError(path, "no saved_model.pb and no integer version folder inside")
    return max(versions, key=lambda child: int(child.name))


def configure_threads(intra_op: int, inter_op: int) -> None:
    """Set TensorFlow's thread pools; only possible before the runtime starts, once per process.
    Without TensorFlow installed there is nothing to set."""
    if not installed("tensorflow"):
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        logger.debug("TensorFlow already initialised; thread settings left as they are")


def describe_device() -> str:
    """Where TensorFlow would run; explains its CUDA probe on a machine without a GPU.
    Without TensorFlow installed, serving is on the CPU (OpenVINO)."""
    if not installed("tensorflow"):
        return "CPU"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return f"{len(gpus)} GPU"
    if tf.test.is_built_with_cuda():
        logger.info(
            "no GPU found, serving on the CPU. The 'failed call to cuInit' line TensorFlow may "
            "have printed above is its GPU probe: expected and harmless without a GPU"
        )
    return "CPU"


@dataclass(frozen=True)
class Classifier:
    """A loaded model version: call `predict` with uint8 images, get probabilities."""

    path: Path
    name: str
    version: int
    labels: tuple[str, ...]
    metadata: dict[str, Any]
    height: int
    width: int
    backend: str  # the runtime serving it: "tensorflow" or "openvino"
    precision: str  # what that runtime computes in: "f32", "bf16" or "int8"
    precision_reason: str  # why that precision: asked for, or auto and what it passed over
    golden: GoldenResult | None  # the check against golden.npz at load; None: the version has none
    _runtime: Backend

    @property
    def uncertain_below(self) -> float:
        """Below this confidence an answer is "not sure", as `python -m training.uncertainty`
        chose it on the test set; 0 (never) for a version without that record."""
        return float(self.metadata.get("uncertainty", {}).get("threshold", 0.0))

    @property
    def adaptive(self) -> bool:
        """Whether the graph adds test-time views only for the images it is unsure of; a
        version without that input serves its fixed views whatever a request asks."""
        return VIEWS_INPUT in self._runtime.signature.inputs

    def views_below(self, views: Views) -> float:
        """The one-view confidence below which an image gets every view: `one` never, `all`
        always, `auto` the version's own (metadata `serving.views`, chosen on validation)."""
        if views == "one":
            return 0.0
        if views == "all":
            return math.inf
        return float(self.metadata.get("serving", {}).get("views", {}).get("all_views_below", 0))

    def predict(self, images: np.ndarray, views_below: np.ndarray | None = None) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, num_labels) float32; blocking, call it off the event loop.
        `views_below`: per image, as `views_below()` gives it; None or NaN: `auto`."""
        if not self.adaptive:
            return self._runtime.predict(images)
        own = np.float32(self.views_below("auto"))
        if views_below is None:
            return self._runtime.predict(images, np.full(len(images), own, np.float32))
        return self._runtime.predict(images, np.where(np.isnan(views_below), own, views_below))

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run the graph once per batch size so the first real request pays no set-up cost."""
        for batch_size in batch_sizes:
            blank = np.zeros((batch_size, self.height, self.width, 3), dtype=np.uint8)
            probabilities = self.predict(blank)
            if probabilities.shape != (batch_size, len(self.labels)):
                raise ModelLoadError(
                    self.path,
                    f"warm-up returned shape {probabilities.shape}, "
                    f"expected {(batch_size, len(self.labels))}",
                )


def load_classifier(
    path: Path,
    backend: BackendChoice = "auto",
    precision: PrecisionChoice = "auto",
    threads: int | None = None,
) -> Classifier:
    """Load and check a model folder; every failure is a ModelLoadError naming path and reason.

    `backend` and `precision` are INFERENCE_BACKEND and INFERENCE_PRECISION (app.settings): an
    explicit precision is served or refused, `auto` follows app.precision's rule. `threads`: the
    CPUs one model call may use (openvino; None: the whole CPU quota).
    """
    version_dir = resolve_version_dir(path)
    metadata = _read_metadata(version_dir)
    labels = tuple(metadata["labels"])
    name = resolve_backend(backend)
    if precision not in ("auto", "f32", "bf16", "int8"):
        raise ValueError(f"precision must be one of auto, f32, bf16, int8; got {precision!r}")
    chosen = precision_plan(precision, name, native_precisions(name), version_dir, metadata)
    notes = list(chosen.notes)
    # Read once, at the shape the first runtime's signature gives, whatever the candidates.
    golden_at = functools.cache(lambda h, w: read_golden(version_dir, h, w, len(labels)))
    for candidate in chosen.candidates:
        runtime = load_backend(version_dir, name, candidate, threads)
        height, width = check_signature(version_dir, runtime.signature, len(labels))
        golden = golden_at(height, width)
        result = None if golden is None else golden.check(runtime, candidate)
        if result is None or result.passed:
            break
        failure = f"{name} {candidate} does not reproduce golden.npz: {result}"
        if chosen.explicit or candidate == "f32":
            raise ModelLoadError(version_dir, failure)
        notes.append(f"{candidate}: {failure}")
    how = "as INFERENCE_PRECISION says" if chosen.explicit else "auto"
    reason = "; ".join([how, *notes])
    if result is None:
        logger.warning(
            "%s: serving %s %s (%s); it has no golden.npz to check it against",
            version_dir,
            name,
            runtime.precision,
            reason,
        )
    else:
        logger.info(
            "%s: serving %s %s (%s); it reproduces golden.npz: %s",
            version_dir,
            name,
            runtime.precision,
            reason,
            result,
        )
    return Classifier(
        path=version_dir,
        name=str(metadata["name"]),
        version=int(metadata["version"]),
        labels=labels,
        metadata=metadata,
        height=height,
        width=width,
        backend=runtime.name,
        precision=runtime.precision,
        precision_reason=reason,
        golden=result,
        _runtime=runtime,
    )


def _read_metadata(version_dir: Path) -> dict[str, Any]:
    metadata_path = version_dir / "metadata.json"
    try:
        metadata = json.loads(metadata_path.read_text())
    except OSError:
        raise ModelLoadError(version_dir, "metadata.json is missing or unreadable") from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(version_dir, f"metadata.json is not valid JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise ModelLoadError(version_dir, "metadata.json is not a JSON object")
    for key in ("name", "version", "labels"):
        if key not in metadata:
            raise ModelLoadError(version_dir, f"metadata.json has no '{key}'")
    labels = metadata["labels"]
    if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
        raise ModelLoadError(version_dir, "metadata.json 'labels' is not a list of strings")
    return metadata
