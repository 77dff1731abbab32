"""The work every peer service does the same way, so that only the serving framework differs.

Runs inside a peer's own venv (Pillow, NumPy, TensorFlow) and imports nothing from `app`; only
`load_model` needs TensorFlow, and imports it when called, so the rest can be tested without it.
"""

import contextlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

MODEL_SIZE = 32  # pixels per side of the model's input
MAX_MODEL_BATCH = 256  # images per signature call at most: this service's MAX_BATCH_SIZE


def cpus() -> int:
    """The CPUs this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def version_dir(path: Path) -> Path:
    """A version folder as given, or the highest integer version inside a model folder."""
    if (path / "saved_model.pb").is_file():
        return path
    versions = [
        child
        for child in path.iterdir()
        if child.is_dir() and child.name.isascii() and child.name.isdigit()
    ]
    if not versions:
        raise ValueError(f"{path}: no saved_model.pb and no integer version folder inside")
    return max(versions, key=lambda child: int(child.name))


def to_pixels(image: bytes | Image.Image) -> np.ndarray:
    """Decode to RGB and squash to 32x32 with a box filter, as this service does by default.

    Peers decode at full size: this service's JPEG draft decoding is its own, and not given to them.
    """
    if isinstance(image, bytes):
        image = Image.open(io.BytesIO(image))
    with image:
        rgb = image.convert("RGB")
    return np.asarray(rgb.resize((MODEL_SIZE, MODEL_SIZE), Image.Resampling.BOX), np.uint8)


def answers(probabilities: np.ndarray, labels: tuple[str, ...]) -> list[dict]:
    """One answer per image: the most probable label, its probability and every label's."""
    return [
        {
            "label": labels[int(np.argmax(row))],
            "confidence": float(np.max(row)),
            "probabilities": dict(zip(labels, row.tolist(), strict=True)),
        }
        for row in probabilities
    ]


def load_model(model_dir: Path, threads: int) -> tuple[Callable[[np.ndarray], np.ndarray], tuple]:
    """The SavedModel's `serving_default` signature as images -> probabilities, and the labels.

    `threads`: TensorFlow's intra-op threads for this process (inter-op: 1, one batch at a time).
    """
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):  # TensorFlow already running: its pools stay
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    folder = version_dir(model_dir)
    metadata = json.loads((folder / "metadata.json").read_text())
    labels = tuple(metadata["labels"])
    signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
    # A version with adaptive views takes its threshold as a second input, as the contract says.
    views = metadata.get("serving", {}).get("views")

    def call(images: np.ndarray) -> tf.Tensor:
        feed = {"images": tf.constant(images)}
        if views is not None:
            feed["all_views_below"] = tf.fill([len(images)], float(views["all_views_below"]))
        return signature(**feed)["probabilities"]

    def predict(images: np.ndarray) -> np.ndarray:
        chunks = [
            call(images[start : start + MAX_MODEL_BATCH])
            for start in range(0, len(images), MAX_MODEL_BATCH)
        ]
        return np.concatenate([chunk.numpy() for chunk in chunks])

    predict(np.zeros((1, MODEL_SIZE, MODEL_SIZE, 3), np.uint8))  # trace before the first request
    return predict, labels
