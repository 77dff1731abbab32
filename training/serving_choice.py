"""What the export serves, chosen on the validation split (never on test): how many test-time
views, the temperature that calibrates them, and whether the views are adaptive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from training import calibration, views
from training.evaluate import validation_logits
from training.export import TTA_LEVELS, TTA_VIEWS, AdaptiveViews


@dataclass(frozen=True)
class Serving:
    """`choose_serving`'s answer, as the export takes it."""

    tta_level: int
    temperature: float
    views: AdaptiveViews | None
    report: dict[str, Any]  # metadata.json's `serving_choice`: what was measured to choose


def choose_serving(
    model: keras.Model, x_val: np.ndarray, y_val: np.ndarray, hyp: dict[str, Any]
) -> tuple[int, float, AdaptiveViews | None, dict[str, Any]]:
    """TTA level, temperature and adaptive views, all chosen on the validation split (never on
    test).

    TTA is chosen first: the temperature must calibrate the probabilities the app will serve.
    """
    if not len(x_val):
        level = 0 if hyp["tta"] == "auto" else int(hyp["tta"])
        return level, 1.0, None, {"note": "no validation split: no TTA choice, no temperature"}
    levels = TTA_LEVELS if hyp["tta"] == "auto" else (int(hyp["tta"]),)
    logits = {level: validation_logits(model, x_val, level) for level in levels}
    accuracy = {level: float(np.mean(logits[level].argmax(1) == y_val)) for level in levels}
    best = max(levels, key=lambda level: (round(accuracy[level], 4), -level))
    temperature = calibration.fit_temperature(logits[best], y_val) if hyp["calibrate"] else 1.0
    report = {
        "tta_val_accuracy": {str(level): round(a, 4) for level, a in accuracy.items()},
        "tta_level": best,
        "temperature": round(temperature, 4),
        "val_before": calibration.summary(calibration.softmax(logits[best]), y_val),
        "val_after": calibration.summary(calibration.softmax(logits[best], temperature), y_val),
    }
    adaptive = None
    if hyp.get("adaptive_views") and best > 0:
        one = logits[0] if 0 in logits else validation_logits(model, x_val, 0)
        adaptive, report["views"] = views.choose(
            one, logits[best], y_val, temperature, TTA_VIEWS[best]
        )
    return best, temperature, adaptive, report
