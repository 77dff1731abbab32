"""When to answer "not sure": the risk-coverage curve of a version's calibrated answers on the
test set, and the confidence below which the service flags an answer.

    python -m training.uncertainty models/cifar10/2 [--target 0.99] [--data ../shared/data/cifar10]

Answers sorted by confidence: keeping only those at or above a threshold, the kept ones are right
more often and fewer images are answered. The threshold is the lowest confidence whose kept
answers are at least TARGET right on the 10,000 test images, measured in f32 through the app's
openvino backend; every other servable precision is scored at that threshold too. It goes into
metadata.json (`uncertainty`), which the service reads as the default for UNCERTAIN_BELOW. The
curve is plotted into docs/, beside a table of scikit-image's sample photos, most of them of
nothing CIFAR-10 knows, with their answer and whether it is flagged.
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.quantize import answers, servable_precisions

DOCS = Path(__file__).resolve().parent.parent / "docs"
TARGET = 0.99
# scikit-image's bundled sample photos (no download): ten of things outside CIFAR-10's classes,
# and a cat, which is inside them.
PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "rocket.jpg",
    "camera.png",
    "hubble_deep_field.jpg",
    "moon.png",
    "coins.png",
    "motorcycle_left.png",
    "retina.jpg",
    "brick.png",
    "chelsea.png",
)


def risk_coverage(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """For each distinct confidence as threshold: the share answered and their accuracy."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    order = np.argsort(-confidence, kind="stable")
    kept = np.arange(1, len(order) + 1)
    accuracy = np.cumsum(correct[order]) / kept
    return {
        "threshold": confidence[order],
        "coverage": kept / len(order),
        "accuracy": accuracy,
    }


def choose_threshold(curve: dict[str, np.ndarray], target: float) -> float:
    """The lowest threshold whose answered images are at least `target` right."""
    meets = np.flatnonzero(curve["accuracy"] >= target)
    if len(meets) == 0:
        return 1.0
    return float(curve["threshold"][meets[-1]])


def at_threshold(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    confidence = probabilities.max(axis=1)
    answered = confidence >= threshold
    correct = probabilities.argmax(axis=1) == labels
    return {
        "coverage": round(float(answered.mean()), 4),
        "accuracy_answered": round(float(correct[answered].mean()), 4) if answered.any() else None,
        "accuracy_flagged": round(float(correct[~answered].mean()), 4)
        if (~answered).any()
        else None,
    }


def sample_photos() -> list[tuple[str, bytes]]:
    import importlib.resources

    folder = importlib.resources.files("skimage") / "data"
    return [(name, (folder / name).read_bytes()) for name in PHOTOS]


def plot(curve: dict[str, np.ndarray], threshold: float, target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    axis.plot(curve["coverage"] * 100, (1 - curve["accuracy"]) * 100)
    coverage = float((curve["threshold"] >= threshold).mean())
    axis.axvline(coverage * 100, color="grey", linestyle="--")
    axis.axhline((1 - target) * 100, color="grey", linestyle=":")
    axis.set_xlabel("answered (coverage), % of test images")
    axis.set_ylabel("wrong among the answered (risk), %")
    axis.set_title(f"confidence >= {threshold:.3f}: {coverage:.1%} answered")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.uncertainty", description=__doc__)
    parser.add_argument("version_dir", type=Path)
    parser.add_argument("--target", type=float, default=TARGET)
    parser.add_argument("--data", default=None, help="CIFAR-10 copy (default: the offline one)")
    args = parser.parse_args(argv)

    from app.backends import load_backend
    from app.preprocessing import decode_image
    from app.settings import get_settings
    from training import hardware
    from training.data import load_dataset

    dataset = load_dataset(args.data)
    labels = np.asarray(dataset.y_test).reshape(-1)
    metadata_path = args.version_dir / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    names = metadata["labels"]
    scored: dict[str, Any] = {}
    photos = sample_photos()
    max_pixels = get_settings().max_image_pixels
    inputs = np.stack([decode_image(data, max_pixels=max_pixels) for _, data in photos])
    photo_answers: dict[str, np.ndarray] = {}
    own = metadata.get("serving", {}).get("views", {}).get("all_views_below")  # adaptive views
    for precision in servable_precisions(args.version_dir):
        backend = load_backend(args.version_dir, "openvino", precision)
        probabilities = answers(backend, dataset.x_test, own)
        if precision == "f32":
            curve = risk_coverage(probabilities, labels)
            threshold = choose_threshold(curve, args.target)
        scored[precision] = probabilities
        photo_answers[precision] = answers(backend, inputs, own)
    record = {
        "threshold": round(threshold, 4),
        "target_accuracy": args.target,
        "chosen_on": "test set, f32, openvino backend",
        "measured_on": hardware.describe(),
        "precisions": {p: at_threshold(s, labels, threshold) for p, s in scored.items()},
    }
    metadata["uncertainty"] = record
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")

    name = f"risk_coverage_{args.version_dir.parent.name}_{args.version_dir.name}"
    plot(curve, threshold, args.target, DOCS / f"{name}.png")
    rows = []
    for (photo, _), row in zip(photos, photo_answers["f32"], strict=True):
        best = int(np.argmax(row))
        flagged = "**not sure**" if row[best] < threshold else "answered"
        rows.append(f"| {photo} | {names[best]} {row[best]:.0%} | {flagged} |")
    flagged_count = sum("not sure" in row for row in rows[:-1])
    f32 = record["precisions"]["f32"]
    text = io.StringIO()
    text.write(
        f'# When the service says "not sure": {args.version_dir.parent.name}/'
        f"{args.version_dir.name}\n\n"
        f"Written by `python -m training.uncertainty {args.version_dir}` on "
        f"{record['measured_on']}.\n\n"
        f'An answer is flagged `"uncertain": true` when its top probability is below '
        f"**{threshold:.3f}**: the lowest confidence at which the answered test images are at "
        f"least {args.target:.0%} right. At that threshold {f32['coverage']:.1%} of the 10,000 "
        f"test images are answered, {f32['accuracy_answered']:.2%} of them right; the "
        f"{1 - f32['coverage']:.1%} flagged are {f32['accuracy_flagged']:.1%} right. The "
        f"probabilities are calibrated, so a low top probability is the model saying it is "
        f"unsure.\n\n![risk-coverage]({name}.png)\n\n"
        "| precision | answered | right among answered | right among flagged |\n"
        "|---|---|---|---|\n"
    )
    for precision, figures in record["precisions"].items():
        text.write(
            f"| {precision} | {figures['coverage']:.1%} | {figures['accuracy_answered']:.2%} | "
            f"{figures['accuracy_flagged']:.1%} |\n"
        )
    text.write(
        f"\nscikit-image's sample photos (f32): {flagged_count} of {len(rows) - 1} photos of "
        "things outside the ten classes are flagged; the last, a cat, is inside them.\n\n"
        "| photo | answer | flag |\n|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    (DOCS / f"{name}.md").write_text(text.getvalue())
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
