import numpy as np
import pytest

from training.calibration import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    softmax,
)


def sampled(temperature: float, count: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits / temperature): calibrated at that T."""
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(count, 10))
    probabilities = softmax(logits, temperature)
    labels = np.array([rng.choice(10, p=p) for p in probabilities])
    return logits, labels


@pytest.mark.parametrize("true_temperature", [0.5, 2.0])
def test_fit_temperature_recovers_the_temperature_the_labels_came_from(
    true_temperature: float,
) -> None:
    logits, labels = sampled(true_temperature)

    fitted = fit_temperature(logits, labels)

    assert fitted == pytest.approx(true_temperature, rel=0.05)
    at_fit = negative_log_likelihood(softmax(logits, fitted), labels)
    assert at_fit < negative_log_likelihood(softmax(logits, 1.0), labels)


def test_ece_is_small_when_calibrated_and_large_when_overconfident() -> None:
    logits, labels = sampled(2.0)

    calibrated = expected_calibration_error(softmax(logits, 2.0), labels)
    overconfident = expected_calibration_error(softmax(logits, 0.5), labels)

    assert calibrated < 0.02
    assert overconfident > 0.1


def test_ece_of_a_hand_worked_case() -> None:
    # Two predictions at confidence 0.9 (one right), two at 0.6 (both right):
    # bin 0.9: |0.5 - 0.9| = 0.4, bin 0.6: |1.0 - 0.6| = 0.4; each holds half: ECE = 0.4.
    probabilities = np.array(
        [[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]],
    )
    labels = np.array([0, 0, 0, 1])

    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.4)
