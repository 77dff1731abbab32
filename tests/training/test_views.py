"""training.views: the threshold for adaptive views, chosen on validation logits."""

import numpy as np
import pytest

from training import calibration
from training.views import choose, mix


def logits(seed: int, count: int = 2000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every view's logits, one view's (the same plus noise: some answers differ), labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count)
    every = rng.normal(0, 1, (count, 10))
    every[np.arange(count), labels] += 3
    one = every + rng.normal(0, 1.5, (count, 10))
    return one, every, labels


@pytest.mark.parametrize("max_changed", [0.001, 0.01])
def test_the_threshold_is_the_lowest_that_changes_at_most_the_allowance(max_changed: float) -> None:
    one_logits, every_logits, labels = logits(0)
    views, report = choose(one_logits, every_logits, labels, 1.0, 6, max_changed)

    one = calibration.softmax(one_logits, views.one_view_temperature)
    every = calibration.softmax(every_logits, 1.0)

    def changed(threshold: float) -> float:
        return float(np.mean(mix(one, every, threshold).argmax(1) != every.argmax(1)))

    assert np.mean(one.argmax(1) != every.argmax(1)) > max_changed  # a choice is needed
    assert changed(views.all_views_below) <= max_changed
    assert changed(views.all_views_below - 2e-4) > max_changed  # lowest, to the 4 decimals kept
    assert report["val_changed_answers"] == pytest.approx(changed(views.all_views_below), abs=1e-4)
    unsure = np.mean(one.max(1) < views.all_views_below)
    assert report["val_passes_per_image"] == pytest.approx(1 + 5 * unsure, abs=1e-3)


def test_one_view_that_always_agrees_needs_no_other_view() -> None:
    _, every_logits, labels = logits(1)
    views, report = choose(every_logits * 0.5, every_logits, labels, 1.0, 6)

    assert views.all_views_below == 0.0
    assert report["val_passes_per_image"] == 1.0
