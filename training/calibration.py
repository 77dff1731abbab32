"""Temperature scaling: make the served confidence a probability.

Label smoothing and test-time augmentation leave a network right more often than it says (the
first default was right 90 % of the time while saying ~72 %). One scalar T, fitted on the
validation split after training by minimising the negative log-likelihood of softmax(logits / T),
fixes most of that without changing any prediction (Guo et al., 2017). The export folds T into
the graph, so the served probabilities are the calibrated ones.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def uncalibrated(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities before a temperature T was applied: softmax(T log p) undoes it exactly."""
    return softmax(np.log(np.clip(probabilities, 1e-30, None)), 1 / temperature)


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    picked = np.asarray(probabilities, np.float64)[np.arange(len(labels)), np.asarray(labels, int)]
    return float(-np.mean(np.log(np.clip(picked, 1e-12, None))))


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """Mean |accuracy - confidence| over equal-width bins of the top-1 probability, weighted by
    how many predictions fall in each bin."""
    confidence, correct = top1(probabilities, labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            gap += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(gap)


def top1(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.asarray(probabilities, np.float64)
    return probabilities.max(axis=1), probabilities.argmax(axis=1) == np.asarray(labels, int)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the validation NLL of softmax(logits / T).

    NLL is convex in 1/T, so a bracketing search on log T finds the one minimum: a coarse grid,
    then golden-section refinement around the best grid point.
    """

    def loss(log_t: float) -> float:
        return negative_log_likelihood(softmax(logits, float(np.exp(log_t))), labels)

    grid = np.linspace(np.log(0.05), np.log(20.0), 61)
    best = int(np.argmin([loss(g) for g in grid]))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(60):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if loss(a) < loss(b):
            high = b
        else:
            low = a
    return float(np.exp((low + high) / 2.0))


def summary(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The figures metadata.json keeps for one split and one temperature."""
    confidence, correct = top1(probabilities, labels)
    return {
        "accuracy": round(float(correct.mean()), 4),
        "mean_confidence": round(float(confidence.mean()), 4),
        "ece": round(expected_calibration_error(probabilities, labels), 4),
        "nll": round(negative_log_likelihood(probabilities, labels), 4),
    }
