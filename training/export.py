"""Export a trained Keras model to the serving contract in docs/model-contract.md.

The SavedModel takes raw uint8 pixels and returns probabilities, so every step between the two
(cast, scaling, normalisation, test-time augmentation, softmax) lives in one place: the graph.
The app loads it with `tf.saved_model.load` alone, without Keras or this package.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

SIGNATURE_KEY = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
METADATA_FILE = "metadata.json"
GOLDEN_FILE = "golden.npz"
GOLDEN_SIZE = 64  # test images in golden.npz
TTA_LEVELS = (0, 1, 2)
TTA_VIEWS = {0: 1, 1: 2, 2: 6}  # forward passes per served image


def emits_probabilities(model: keras.Model) -> bool:
    """True if the model's last layer already applies a softmax, False if it emits logits.

    Looked up rather than passed so a model cannot be exported with a double or missing softmax:
    a `Softmax` layer or any layer whose `activation` is softmax counts as probabilities.
    """
    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return True
    activation = getattr(last, "activation", None)
    return activation is not None and getattr(activation, "__name__", "") == "softmax"


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def float32_twin(model: keras.Model) -> keras.Model:
    """The same network and weights computing in float32.

    A model trained under a mixed policy (bfloat16 on a CPU with bf16 units, float16 on a GPU)
    casts to that type inside its graph: OpenVINO cannot read the SavedModel it exports
    ("unknown element type bf16"), and every runtime would be held to the training's precision.
    The export is float32; what serving computes in is chosen where it runs (INFERENCE_PRECISION).
    """
    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model

    def in_float32(layer: keras.layers.Layer) -> keras.layers.Layer:
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    twin = keras.models.clone_model(model, clone_function=in_float32)
    twin.set_weights(model.get_weights())
    return twin


def view_logits(model: keras.Model, pixels: tf.Tensor, tta_level: int = 0) -> tf.Tensor:
    """The model's logits averaged over the test-time views of `pixels` (float 0..255, NHWC).

    Level 0: the image. Level 1: the mean of the image and its mirror. Level 2 (airbench's
    multi-crop): half level 1, half the level-1 mean of two copies shifted one pixel up-left and
    down-right (reflect-padded): 6 views. All views go through the model as one batch. A model
    ending in a softmax gives log-probabilities instead, which differ from logits by a constant
    per image and so average and scale the same way.
    """
    views = [pixels]
    if tta_level >= 2:
        padded = tf.pad(pixels, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
        views += [padded[:, :-2, :-2], padded[:, 2:, 2:]]
    if tta_level >= 1:
        views += [tf.reverse(view, axis=[2]) for view in views]
    outputs = tf.cast(model(tf.concat(views, axis=0), training=False), tf.float32)
    if emits_probabilities(model):
        outputs = tf.math.log(tf.maximum(outputs, 1e-30))
    per_view = tf.split(outputs, len(views), axis=0)
    if tta_level == 0:
        return per_view[0]
    mirror_means = [
        (per_view[i] + per_view[i + len(views) // 2]) / 2.0 for i in range(len(views) // 2)
    ]
    if tta_level == 1:
        return mirror_means[0]
    return 0.5 * mirror_means[0] + 0.25 * (mirror_means[1] + mirror_means[2])


def export_model(
    model: keras.Model,
    version_dir: Path,
    *,
    labels: Sequence[str],
    metadata: dict[str, Any],
    tta_level: int = 0,
    temperature: float = 1.0,
) -> None:
    """Write `version_dir` as a SavedModel with the `serving_default` signature plus metadata.json.

    The model must take float pixels in 0..255, NHWC; it is exported in float32, whatever policy
    it trained under (`float32_twin`). The signature serves
    softmax(view_logits(model, images, tta_level) / temperature): the test-time augmentation and
    the fitted temperature are part of the graph, so every runtime serves the same probabilities.
    """
    model = float32_twin(model)
    height, width, channels = (int(d) for d in model.input_shape[1:])
    num_classes = int(model.output_shape[-1])
    if num_classes != len(labels):
        raise ValueError(f"model has {num_classes} outputs but {len(labels)} labels were given")
    if tta_level not in TTA_LEVELS:
        raise ValueError(f"tta_level must be one of {TTA_LEVELS}, got {tta_level}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")

    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = view_logits(model, tf.cast(images, tf.float32), tta_level)
        return {OUTPUT_NAME: tf.nn.softmax(logits / temperature, axis=-1)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=SIGNATURE_KEY,
        fn=serve,
        input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8, name=INPUT_NAME)],
    )
    version_dir = Path(version_dir)
    archive.write_out(str(version_dir), verbose=False)

    full = {
        **metadata,
        "labels": list(labels),
        "input": {"height": height, "width": width, "channels": channels, "dtype": "uint8"},
        "serving": {
            "tta_level": tta_level,
            "forward_passes_per_image": TTA_VIEWS[tta_level],
            "temperature": round(float(temperature), 4),
        },
        "versions": library_versions(),
    }
    write_metadata(version_dir, full)


def write_golden(version_dir: Path, images: np.ndarray) -> Path:
    """golden.npz: `images` and the exported signature's `probabilities` for them, so any
    runtime that serves this version can check itself against TensorFlow at load
    (docs/model-contract.md)."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    signature = tf.saved_model.load(str(version_dir)).signatures[SIGNATURE_KEY]
    probabilities = signature(**{INPUT_NAME: tf.constant(images)})[OUTPUT_NAME].numpy()
    path = Path(version_dir) / GOLDEN_FILE
    np.savez_compressed(path, images=images, probabilities=probabilities.astype(np.float32))
    return path


def write_metadata(version_dir: Path, metadata: dict[str, Any]) -> None:
    """(Re)write metadata.json; the run calls it again once the exported model is measured."""
    text = json.dumps(metadata, indent=2, ensure_ascii=False) + "\n"
    (Path(version_dir) / METADATA_FILE).write_text(text, encoding="utf-8")


def read_metadata(version_dir: Path) -> dict[str, Any]:
    return json.loads((Path(version_dir) / METADATA_FILE).read_text(encoding="utf-8"))
