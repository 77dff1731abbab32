"""The served model: a SavedModel behind its `serving_default` signature, checked against DESIGN.md.

This is the only module that imports TensorFlow; it needs neither Keras nor the training code.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
SIGNATURE = "serving_default"


class ModelLoadError(RuntimeError):
    """The model folder is missing, corrupt, or breaks the serving contract."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot serve the model at {path}: {reason}")
        self.path = path
        self.reason = reason


def resolve_version_dir(path: Path) -> Path:
    """A version folder as given, or the highest integer version inside a model folder."""
    if (path / "saved_model.pb").is_file():
        return path
    if not path.is_dir():
        raise ModelLoadError(path, "no such directory")
    versions = [child for child in path.iterdir() if child.is_dir() and child.name.isdigit()]
    if not versions:
        raise ModelLoadError(path, "no saved_model.pb and no integer version folder inside")
    return max(versions, key=lambda child: int(child.name))


def configure_threads(intra_op: int, inter_op: int) -> None:
    """Set TensorFlow's thread pools; only possible before the runtime starts, once per process."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        logger.debug("TensorFlow already initialised; thread settings left as they are")


def describe_device() -> str:
    """Where inference runs; explains TensorFlow's CUDA probe on a machine without a GPU."""
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
    _signature: Any
    _loaded: Any  # the signature holds only weak references to this object's variables

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, num_labels) float32; blocking, call it off the event loop."""
        outputs = self._signature(**{INPUT_NAME: tf.constant(images, dtype=tf.uint8)})
        return outputs[OUTPUT_NAME].numpy()

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


def load_classifier(path: Path) -> Classifier:
    """Load and check a model folder; every failure is a ModelLoadError naming path and reason."""
    version_dir = resolve_version_dir(path)
    metadata = _read_metadata(version_dir)
    try:
        loaded = tf.saved_model.load(str(version_dir))
    except Exception as exc:  # TensorFlow raises many unrelated types for a broken folder
        # Keep TensorFlow's own words (first line, bounded): they say which file is broken.
        detail = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModelLoadError(
            version_dir, f"not a loadable SavedModel ({type(exc).__name__}: {detail})"
        ) from exc
    signatures = getattr(loaded, "signatures", {})
    if SIGNATURE not in signatures:
        raise ModelLoadError(version_dir, f"no '{SIGNATURE}' signature")
    signature = signatures[SIGNATURE]
    labels = tuple(metadata["labels"])
    height, width = _check_signature(version_dir, signature, len(labels))
    return Classifier(
        path=version_dir,
        name=str(metadata["name"]),
        version=int(metadata["version"]),
        labels=labels,
        metadata=metadata,
        height=height,
        width=width,
        _signature=signature,
        _loaded=loaded,
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


def _check_signature(version_dir: Path, signature: Any, num_labels: int) -> tuple[int, int]:
    """Enforce DESIGN.md: `images` uint8 [None, H, W, 3] in, `probabilities` float32 out."""
    _, inputs = signature.structured_input_signature
    if set(inputs) != {INPUT_NAME}:
        raise ModelLoadError(version_dir, f"signature inputs are {sorted(inputs)}, not ['images']")
    spec = inputs[INPUT_NAME]
    shape = spec.shape.as_list() if spec.shape.rank is not None else None
    if spec.dtype != tf.uint8 or shape is None or len(shape) != 4 or shape[3] != 3:
        raise ModelLoadError(
            version_dir, f"input 'images' is {spec.dtype.name} {shape}, not uint8 [None, H, W, 3]"
        )
    if shape[1] is None or shape[2] is None:
        raise ModelLoadError(version_dir, "input 'images' must fix height and width")
    if shape[1] != shape[2]:
        raise ModelLoadError(
            version_dir,
            f"input 'images' is {shape[1]}x{shape[2]}; the service resizes uploads to a square",
        )
    outputs = signature.structured_outputs
    if not isinstance(outputs, dict) or OUTPUT_NAME not in outputs:
        raise ModelLoadError(version_dir, "signature has no 'probabilities' output")
    out = outputs[OUTPUT_NAME]
    if out.dtype != tf.float32 or out.shape.as_list()[-1:] != [num_labels]:
        raise ModelLoadError(
            version_dir,
            f"output 'probabilities' is {out.dtype.name} {out.shape.as_list()}, "
            f"not float32 [None, {num_labels}] for the {num_labels} labels in metadata.json",
        )
    return int(shape[1]), int(shape[2])
