"""Export a trained Keras model to the serving contract in docs/model-contract.md.

The SavedModel takes raw uint8 pixels and returns probabilities, so every step between the two
(cast, scaling, normalisation, test-time augmentation, softmax) lives in one place: the graph.
The app loads it with `tf.saved_model.load` alone, without Keras or this package.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from app.contract import INPUT_NAME, OUTPUT_NAME, VIEWS_INPUT
from app.contract import SIGNATURE as SIGNATURE_KEY

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


@dataclass(frozen=True)
class AdaptiveViews:
    """One view first; the other test-time views only for images whose one-view confidence
    (softmax of its logits / `one_view_temperature`) is below the request's threshold, by
    default `all_views_below` (training.views chooses both on the validation split)."""

    all_views_below: float
    one_view_temperature: float


def reflect_pad(pixels: tf.Tensor) -> tf.Tensor:
    """Reflect-pad height and width by one pixel: tf.pad's REFLECT, written so that it also
    takes an empty batch (tf.pad checks the batch dimension against its padding)."""
    rows = tf.concat([pixels[:, 1:2], pixels, pixels[:, -2:-1]], axis=1)
    return tf.concat([rows[:, :, 1:2], rows, rows[:, :, -2:-1]], axis=2)


def view_logits(
    model: keras.Model,
    pixels: tf.Tensor,
    tta_level: int = 0,
    identity_logits: tf.Tensor | None = None,
) -> tf.Tensor:
    """The model's logits averaged over the test-time views of `pixels` (float 0..255, NHWC).

    Level 0: the image. Level 1: the mean of the image and its mirror. Level 2 (airbench's
    multi-crop): half level 1, half the level-1 mean of two copies shifted one pixel up-left and
    down-right (reflect-padded): 6 views. All views go through the model as one batch; with
    `identity_logits` (the image's own view, computed already) all but that one. A model
    ending in a softmax gives log-probabilities instead, which differ from logits by a constant
    per image and so average and scale the same way.
    """
    views = [pixels]
    if tta_level >= 2:
        padded = reflect_pad(pixels)
        views += [padded[:, :-2, :-2], padded[:, 2:, 2:]]
    if tta_level >= 1:
        views += [tf.reverse(view, axis=[2]) for view in views]
    computed = views if identity_logits is None else views[1:]
    outputs = tf.cast(model(tf.concat(computed, axis=0), training=False), tf.float32)
    if emits_probabilities(model):
        outputs = tf.math.log(tf.maximum(outputs, 1e-30))
    per_view = tf.split(outputs, len(computed), axis=0)
    if identity_logits is not None:
        per_view = [identity_logits, *per_view]
    if tta_level == 0:
        return per_view[0]
    mirror_means = [
        (per_view[i] + per_view[i + len(views) // 2]) / 2.0 for i in range(len(views) // 2)
    ]
    if tta_level == 1:
        return mirror_means[0]
    return 0.5 * mirror_means[0] + 0.25 * (mirror_means[1] + mirror_means[2])


def adaptive_probabilities(
    model: keras.Model,
    pixels: tf.Tensor,
    all_views_below: tf.Tensor,
    tta_level: int,
    temperature: float,
    views: AdaptiveViews,
) -> tf.Tensor:
    """One view for every image; every view for the images whose one-view confidence is below
    their `all_views_below`, each path with its own fitted temperature. The extra views run on
    those images only (a gather, a second model call, a scatter), and not at all when none
    needs them: a CPU pays for what the unsure images need."""
    one = view_logits(model, pixels, 0)
    answers = tf.nn.softmax(one / views.one_view_temperature, axis=-1)
    unsure = tf.where(tf.reduce_max(answers, axis=-1) < all_views_below)  # (K, 1) indices

    def with_every_view() -> tf.Tensor:
        logits = view_logits(
            model, tf.gather_nd(pixels, unsure), tta_level, tf.gather_nd(one, unsure)
        )
        return tf.tensor_scatter_nd_update(
            answers, unsure, tf.nn.softmax(logits / temperature, axis=-1)
        )

    return tf.cond(tf.size(unsure) > 0, with_every_view, lambda: answers)


def export_model(
    model: keras.Model,
    version_dir: Path,
    *,
    labels: Sequence[str],
    metadata: dict[str, Any],
    tta_level: int = 0,
    temperature: float = 1.0,
    views: AdaptiveViews | None = None,
) -> dict[str, Any]:
    """Write `version_dir` as a SavedModel with the `serving_default` signature plus metadata.json,
    and return the record written (a caller that adds to it need not read it back).

    The model must take float pixels in 0..255, NHWC; it is exported in float32, whatever policy
    it trained under (`float32_twin`). The signature serves
    softmax(view_logits(model, images, tta_level) / temperature): the test-time augmentation and
    the fitted temperature are part of the graph, so every runtime serves the same probabilities.
    With `views`, the signature takes `all_views_below` too (adaptive_probabilities).
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
    if views is not None and tta_level == 0:
        raise ValueError("adaptive views need more than one view (tta_level 1 or 2)")
    images_spec = tf.TensorSpec([None, height, width, channels], tf.uint8, name=INPUT_NAME)

    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = view_logits(model, tf.cast(images, tf.float32), tta_level)
        return {OUTPUT_NAME: tf.nn.softmax(logits / temperature, axis=-1)}

    def serve_adaptive(images: tf.Tensor, all_views_below: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.cast(images, tf.float32)
        return {
            OUTPUT_NAME: adaptive_probabilities(
                model, pixels, all_views_below, tta_level, temperature, views
            )
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    if views is None:
        archive.add_endpoint(name=SIGNATURE_KEY, fn=serve, input_signature=[images_spec])
    else:
        archive.add_endpoint(
            name=SIGNATURE_KEY,
            fn=serve_adaptive,
            input_signature=[images_spec, tf.TensorSpec([None], tf.float32, name=VIEWS_INPUT)],
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
            **({} if views is None else {"views": views_record(views, tta_level)}),
        },
        "versions": library_versions(),
    }
    write_metadata(version_dir, full)
    return full


def views_record(views: AdaptiveViews, tta_level: int) -> dict[str, Any]:
    """metadata.json's `serving.views`: what the app feeds by default and what it costs."""
    return {
        "policy": "adaptive",
        "all_views_below": round(float(views.all_views_below), 4),
        "one_view_temperature": round(float(views.one_view_temperature), 4),
        "passes": {"one": 1, "all": TTA_VIEWS[tta_level]},
    }


def write_golden(version_dir: Path, images: np.ndarray) -> Path:
    """golden.npz: `images` and the exported signature's `probabilities` for them, so any
    runtime that serves this version can check itself against TensorFlow at load
    (docs/model-contract.md); with adaptive views, every view's answers and one view's
    (`one_view`)."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    signature = tf.saved_model.load(str(version_dir)).signatures[SIGNATURE_KEY]
    answers: dict[str, np.ndarray] = {}
    if VIEWS_INPUT in signature.structured_input_signature[1]:
        for key, threshold in (("probabilities", np.inf), ("one_view", 0.0)):
            thresholds = tf.fill([len(images)], tf.constant(threshold, tf.float32))
            feed = {INPUT_NAME: tf.constant(images), VIEWS_INPUT: thresholds}
            answers[key] = signature(**feed)[OUTPUT_NAME].numpy().astype(np.float32)
    else:
        feed = {INPUT_NAME: tf.constant(images)}
        answers["probabilities"] = signature(**feed)[OUTPUT_NAME].numpy().astype(np.float32)
    path = Path(version_dir) / GOLDEN_FILE
    np.savez_compressed(path, images=images, **answers)
    return path


def write_metadata(version_dir: Path, metadata: dict[str, Any]) -> None:
    """(Re)write metadata.json; the run calls it again once the exported model is measured."""
    text = json.dumps(metadata, indent=2, ensure_ascii=False) + "\n"
    (Path(version_dir) / METADATA_FILE).write_text(text, encoding="utf-8")


def read_metadata(version_dir: Path) -> dict[str, Any]:
    return json.loads((Path(version_dir) / METADATA_FILE).read_text(encoding="utf-8"))
