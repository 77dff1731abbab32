"""The exported model measured as the app serves it, on the test images: through its
`serving_default` signature, loaded once for every measurement; then the golden set and the
INT8 model beside it, each precision measured through the app's own backend."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training import calibration, views
from training.data import Dataset, Split
from training.evaluate import Evaluation, load_signature, score, signature_probabilities
from training.export import GOLDEN_SIZE, TTA_VIEWS, views_record, write_golden
from training.quantize import quantize_and_measure
from training.serving_choice import Serving


@dataclass(frozen=True)
class Measured:
    test: Evaluation
    val_accuracy: float | None  # None without a validation split
    probabilities: np.ndarray  # what the app serves for the test images
    uncalibrated: np.ndarray  # the same before their temperatures, for the figures
    passes: float  # network passes per test image
    int8: dict[str, Any]  # metadata.json's `quantization` and `precisions`


def measure_export(
    version_dir: Path,
    dataset: Dataset,
    split: Split,
    x_train: np.ndarray,
    serving: Serving,
    seed: int,
) -> Measured:
    """`x_train`: the images the INT8 model is calibrated on (`seed` picks them)."""
    signature = load_signature(version_dir)
    views_below = None  # a version with adaptive views is fed its own threshold, as the app does
    if serving.views is not None:
        views_below = views_record(serving.views, serving.tta_level)["all_views_below"]
    probabilities = signature_probabilities(signature, dataset.x_test, views_below=views_below)
    test = score(probabilities, dataset.y_test, dataset.labels)
    val_accuracy = None
    if len(split.x_val):
        val = signature_probabilities(signature, split.x_val, views_below=views_below)
        val_accuracy = score(val, split.y_val, dataset.labels).accuracy
    # The uncalibrated twin of what is served, for the before/after figures.
    uncalibrated = calibration.uncalibrated(probabilities, serving.temperature)
    passes = TTA_VIEWS[serving.tta_level]
    if serving.views is not None:
        one_view = signature_probabilities(signature, dataset.x_test, views_below=0.0)
        uncalibrated = views.uncalibrated(
            probabilities, one_view, serving.views, serving.temperature
        )
        passes = views.passes(one_view.max(axis=1), serving.views.all_views_below, passes)
    write_golden(version_dir, dataset.x_test[:GOLDEN_SIZE])
    int8 = quantize_and_measure(version_dir, x_train, dataset.x_test, dataset.y_test, seed=seed)
    return Measured(test, val_accuracy, probabilities, uncalibrated, passes, int8)


def measured_record(
    record: dict[str, Any], measured: Measured, serving: Serving, y_test: np.ndarray, **more: Any
) -> dict[str, Any]:
    """metadata.json whole: the export's `record` with what was measured through it and how
    its serving was chosen; `more` (how it trained, or whose weights it holds) before
    `created`."""
    return {
        **record,
        "serving": {**record["serving"], "forward_passes_per_image": measured.passes},
        "metrics": {
            "test_accuracy": measured.test.accuracy,
            "val_accuracy": measured.val_accuracy,
            "per_class_accuracy": measured.test.per_class_accuracy,
            "test_calibration": {
                "ece_bins": calibration.ECE_BINS,
                "before": calibration.summary(measured.uncalibrated, y_test),
                "after": calibration.summary(measured.probabilities, y_test),
            },
            "measured_through": "serving_default signature of this SavedModel",
        },
        "serving_choice": serving.report,
        **measured.int8,
        **more,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
