"""TensorFlow: the SavedModel's `serving_default` signature, called as exported (CPU or GPU).

The only module that imports TensorFlow to serve; it needs neither Keras nor the training code.
"""

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from app.backends import all_views_unless
from app.contract import (
    INPUT_NAME,
    OUTPUT_NAME,
    SIGNATURE,
    VIEWS_INPUT,
    ModelLoadError,
    Signature,
    TensorInfo,
    error_detail,
)


def sees_gpu() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


class TensorFlowBackend:
    """The exported graph in TensorFlow itself: the reference every other runtime is checked
    against (golden.npz holds its answers)."""

    name = "tensorflow"
    precision = "f32"

    def __init__(self, version_dir: Path) -> None:
        try:
            loaded = tf.saved_model.load(str(version_dir))
        except Exception as exc:  # TensorFlow raises many unrelated types for a broken folder
            raise ModelLoadError(
                version_dir, f"not a loadable SavedModel ({error_detail(exc)})"
            ) from exc
        signatures = getattr(loaded, "signatures", {})
        if SIGNATURE not in signatures:
            raise ModelLoadError(version_dir, f"no '{SIGNATURE}' signature")
        self._loaded = loaded  # the signature holds only weak references to its variables
        self._signature = signatures[SIGNATURE]
        self.signature = _describe(self._signature)

    def predict(self, images: np.ndarray, views_below: np.ndarray | None = None) -> np.ndarray:
        inputs = {INPUT_NAME: tf.constant(images, dtype=tf.uint8)}
        if VIEWS_INPUT in self.signature.inputs:
            inputs[VIEWS_INPUT] = tf.constant(all_views_unless(views_below, len(images)))
        outputs = self._signature(**inputs)
        return outputs[OUTPUT_NAME].numpy()


def _describe(signature: Any) -> Signature:
    _, inputs = signature.structured_input_signature
    outputs = signature.structured_outputs
    return Signature(
        inputs={name: _info(spec) for name, spec in inputs.items()},
        outputs={name: _info(spec) for name, spec in outputs.items()}
        if isinstance(outputs, dict)
        else {},
    )


def _info(spec: Any) -> TensorInfo:
    shape = tuple(spec.shape.as_list()) if spec.shape.rank is not None else None
    return TensorInfo(dtype=spec.dtype.name, shape=shape)
