"""Export a trained Keras model to the serving contract in shared/DESIGN.md.

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
import tensorflow as tf

SIGNATURE_KEY = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
METADATA_FILE = "metadata.json"


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


def export_model(
    model: keras.Model,
    version_dir: Path,
    *,
    labels: Sequence[str],
    metadata: dict[str, Any],
    tta: bool = False,
) -> None:
    """Write `version_dir` as a SavedModel with the `serving_default` signature plus metadata.json.

    The model must take float pixels in 0..255, NHWC. Its output is treated as logits unless its
    last layer is a softmax (see `emits_probabilities`). With `tta`, the probabilities are the mean
    of those for the image and its horizontal mirror.
    """
    height, width, channels = (int(d) for d in model.input_shape[1:])
    num_classes = int(model.output_shape[-1])
    if num_classes != len(labels):
        raise ValueError(f"model has {num_classes} outputs but {len(labels)} labels were given")
    softmax_inside = emits_probabilities(model)

    def probabilities(pixels: tf.Tensor) -> tf.Tensor:
        outputs = model(pixels, training=False)
        return outputs if softmax_inside else tf.nn.softmax(outputs, axis=-1)

    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.cast(images, tf.float32)
        probs = probabilities(pixels)
        if tta:
            probs = (probs + probabilities(tf.image.flip_left_right(pixels))) / 2.0
        return {OUTPUT_NAME: tf.cast(probs, tf.float32)}

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
        "versions": library_versions(),
    }
    write_metadata(version_dir, full)


def write_metadata(version_dir: Path, metadata: dict[str, Any]) -> None:
    """(Re)write metadata.json; the run calls it again once the exported model is measured."""
    text = json.dumps(metadata, indent=2, ensure_ascii=False) + "\n"
    (Path(version_dir) / METADATA_FILE).write_text(text, encoding="utf-8")


def read_metadata(version_dir: Path) -> dict[str, Any]:
    return json.loads((Path(version_dir) / METADATA_FILE).read_text(encoding="utf-8"))
