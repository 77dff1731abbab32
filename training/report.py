"""The run's report: the blog's figures as PNG, the history as CSV and the model summary as text."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt

from training.calibration import ECE_BINS, expected_calibration_error, top1

HISTORY_FILE = "history.csv"


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def read_history(path: Path) -> dict[str, list[float]]:
    """history.csv as written by keras.callbacks.CSVLogger: one row per epoch."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            missing = value in ("", "NA", None)  # CSVLogger writes NA for absent metrics
            columns.setdefault(key, []).append(np.nan if missing else float(value))
    return columns


def plot_history(history: dict[str, list[float]], report_dir: Path) -> list[Path]:
    """loss.png and accuracy.png: train and validation curves per epoch."""
    written = []
    epochs = np.arange(1, len(next(iter(history.values()), [])) + 1)
    for metric, title in (("loss", "Loss"), ("accuracy", "Accuracy")):
        if metric not in history:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(epochs, history[metric], marker="o", label="train")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        ax.set(title=f"{title} per epoch", xlabel="epoch", ylabel=metric)
        ax.grid(alpha=0.3)
        ax.legend()
        path = Path(report_dir) / f"{metric}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_confusion(
    y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str], path: Path
) -> None:
    """Row-normalised confusion matrix with class names, each cell annotated."""
    counts = confusion_matrix(y_true, y_pred, len(labels))
    normalised = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(6, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set(xlabel="predicted", ylabel="true", title="Normalised confusion matrix (test)")
    for i in range(len(labels)):
        for j in range(len(labels)):
            value = normalised[i, j]
            color = "white" if value > 0.5 else "black"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_misclassified(
    images: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    labels: Sequence[str],
    path: Path,
    count: int = 25,
) -> None:
    """A grid of the first `count` misclassified test images, titled true / predicted."""
    wrong = np.flatnonzero(np.asarray(y_true) != np.asarray(y_pred))[:count]
    columns = 5
    rows = max(1, int(np.ceil(len(wrong) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.9, rows * 2.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, wrong, strict=False):
        ax.imshow(images[index], interpolation="nearest")
        ax.set_title(f"true: {labels[y_true[index]]}\npred: {labels[y_pred[index]]}", fontsize=8)
    fig.suptitle("Misclassified test images")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(
    probabilities: dict[str, np.ndarray], y_true: np.ndarray, path: Path, bins: int = ECE_BINS
) -> None:
    """Reliability diagram: accuracy against confidence per bin, one line per set of
    probabilities (before and after calibration), the diagonal being perfect calibration."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    edges = np.linspace(0.0, 1.0, bins + 1)
    for name, probs in probabilities.items():
        confidence, correct = top1(probs, y_true)
        which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
        filled = [b for b in range(bins) if np.any(which == b)]
        ax.plot(
            [confidence[which == b].mean() for b in filled],
            [correct[which == b].mean() for b in filled],
            marker="o",
            label=f"{name}: ECE {expected_calibration_error(probs, y_true, bins):.2%}",
        )
    ax.set(
        title="Reliability (test)",
        xlabel="confidence (top-1 probability)",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_test_figures(
    report_dir: Path,
    images: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    labels: Sequence[str],
) -> None:
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    plot_confusion(y_true, y_pred, labels, report_dir / "confusion_matrix.png")
    plot_misclassified(images, y_true, y_pred, labels, report_dir / "misclassified.png")
    history = report_dir / HISTORY_FILE
    if history.is_file():
        plot_history(read_history(history), report_dir)


def write_model_summary(model, path: Path) -> None:
    """The Keras summary (layers, shapes, parameter counts) as plain text."""
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line), line_length=100)
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
