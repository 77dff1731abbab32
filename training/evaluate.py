"""Evaluate any exported model through its serving signature: `python -m training.evaluate DIR`.

It uses the same `serving_default` signature the app calls, so the accuracy it prints is the
accuracy users get; it also writes the report figures again into DIR/report/.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    SIGNATURE_KEY,
    VIEWS_INPUT,
    read_metadata,
    view_logits,
)


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    per_class_accuracy: dict[str, float]
    predictions: np.ndarray


def load_signature(version_dir: Path) -> Any:
    """The SavedModel's serving signature, as the app calls it."""
    import tensorflow as tf

    return tf.saved_model.load(str(version_dir)).signatures[SIGNATURE_KEY]


def predict_probabilities(
    version_dir: Path, images: np.ndarray, views_below: float | None = None
) -> np.ndarray:
    """Probabilities from the SavedModel's serving signature, fed uint8 like the app feeds it:
    a model with adaptive views gets `views_below` for every image, by default its own
    threshold (metadata.json `serving.views`)."""
    signature = load_signature(version_dir)
    if takes_views(signature) and views_below is None:
        views_below = read_metadata(version_dir)["serving"]["views"]["all_views_below"]
    return signature_probabilities(signature, images, views_below=views_below)


def takes_views(signature: Any) -> bool:
    """Whether the signature has adaptive views' `all_views_below` input."""
    return VIEWS_INPUT in signature.structured_input_signature[1]


def signature_probabilities(
    signature: Any,
    images: np.ndarray,
    batch_size: int = 1000,
    views_below: float | None = None,
) -> np.ndarray:
    """`predict_probabilities` through a signature loaded already: one load serves many calls.
    A signature with adaptive views needs `views_below`."""
    import tensorflow as tf

    adaptive = takes_views(signature)
    if adaptive and views_below is None:
        raise ValueError("this model has adaptive views: give views_below")

    def call(batch: np.ndarray) -> np.ndarray:
        feed = {INPUT_NAME: tf.constant(batch, tf.uint8)}
        if adaptive:
            feed[VIEWS_INPUT] = tf.fill([len(batch)], tf.constant(views_below, tf.float32))
        return signature(**feed)[OUTPUT_NAME].numpy()

    outputs = [
        call(images[start : start + batch_size]) for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def validation_logits(
    model: Any, x_val: np.ndarray, tta_level: int, batch_size: int = 500
) -> np.ndarray:
    """The logits the export will serve (before temperature), computed by the same function."""
    import tensorflow as tf

    return np.concatenate(
        [
            view_logits(model, tf.constant(x_val[i : i + batch_size], tf.float32), tta_level)
            for i in range(0, len(x_val), batch_size)
        ]
    )


def score(probabilities: np.ndarray, y_true: np.ndarray, labels: Sequence[str]) -> Evaluation:
    predictions = probabilities.argmax(axis=1)
    y_true = np.asarray(y_true).astype(int)
    per_class = {
        label: round(float(np.mean(predictions[y_true == index] == index)), 4)
        for index, label in enumerate(labels)
        if np.any(y_true == index)
    }
    accuracy = float(np.mean(predictions == y_true)) if len(y_true) else float("nan")
    return Evaluation(round(accuracy, 4), per_class, predictions)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from training.calibration import ECE_BINS, expected_calibration_error, uncalibrated
    from training.data import load_dataset
    from training.report import HISTORY_FILE, plot_reliability, write_test_figures

    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("model_dir", type=Path, help="an exported version folder (models/x/N)")
    parser.add_argument("--data", help="test data, as for `python -m training` (default: offline)")
    parser.add_argument(
        "--report-dir", type=Path, help="where to write figures (default MODEL_DIR/report)"
    )
    args = parser.parse_args(argv)

    metadata = read_metadata(args.model_dir)
    labels = metadata["labels"]
    dataset = load_dataset(args.data)
    if list(dataset.labels) != list(labels):
        parser.error(f"the model's labels {labels} differ from the data's {list(dataset.labels)}")
    probabilities = predict_probabilities(args.model_dir, dataset.x_test)
    result = score(probabilities, dataset.y_test, labels)
    report_dir = args.report_dir or args.model_dir / "report"
    history = args.model_dir / "report" / HISTORY_FILE
    if history.is_file() and report_dir.resolve() != history.parent.resolve():
        report_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(history, report_dir / HISTORY_FILE)  # so the curves are redrawn there too
    write_test_figures(report_dir, dataset.x_test, dataset.y_test, result.predictions, labels)
    # The served probabilities and, undoing the exported temperature, the uncalibrated ones.
    temperature = float(metadata.get("serving", {}).get("temperature", 1.0))
    curves = {"served": probabilities}
    if temperature != 1.0:
        curves = {
            "before": uncalibrated(probabilities, temperature),
            f"after (T = {temperature:.2f})": probabilities,
        }
    plot_reliability(curves, dataset.y_test, report_dir / "calibration.png")
    print(f"model {metadata.get('name')} v{metadata.get('version')} ({args.model_dir})")
    print(f"data: {dataset.source}, {len(dataset.x_test)} test images")
    for label, accuracy in result.per_class_accuracy.items():
        print(f"  {label:>12s}  {accuracy:.4f}")
    print(f"test accuracy: {result.accuracy:.4f}")
    ece = expected_calibration_error(probabilities, dataset.y_test)
    print(f"test ECE ({ECE_BINS} bins): {ece:.4f}")
    print(f"figures: {report_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
