"""Adaptive test-time views: one view for every image, every view only where one is unsure.

cifar10/2 computes six views of every image (TTA level 2) for 94.9 % on validation against
94.2 % from one view, and most images get the same answer from one view as from six. So the
export answers from one view and adds the other five only for images whose one-view confidence
is below a threshold (`training.export.adaptive_probabilities`). `choose` picks that threshold
on the validation split, never test: the lowest at which at most MAX_CHANGED of the validation
answers differ from every view's, so validation accuracy can fall at most that far, whichever
answers change. Each path keeps its own fitted temperature, so the served mixture stays
calibrated.

    python -m training.views models/cifar10/2        # writes the next version, e.g. cifar10/3

derives a new version from an exported `fast` version without training again: the same
weights, read back from its SavedModel, exported with adaptive views, then measured, given a
golden set, an INT8 model and the per-precision record as `python -m training` does.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training import calibration

if TYPE_CHECKING:  # training.export imports TensorFlow; passes() and choose() need none of it
    from training.export import AdaptiveViews

MAX_CHANGED = 0.001  # of validation answers that may differ from every view's (0.1 %)


def choose(
    one_logits: np.ndarray,
    all_logits: np.ndarray,
    labels: np.ndarray,
    temperature: float,
    all_passes: int,
    max_changed: float = MAX_CHANGED,
) -> tuple[AdaptiveViews, dict[str, Any]]:
    """The threshold and the one-view temperature, from validation logits of both paths.

    Answers change only for images kept at one view whose one-view label differs from every
    view's; the threshold sits just above the most confident of those beyond the allowance,
    rounded up to 4 decimals (what metadata.json keeps and the app feeds).
    """
    from training.export import AdaptiveViews

    one_temperature = calibration.fit_temperature(one_logits, labels)
    one = calibration.softmax(one_logits, one_temperature)
    every = calibration.softmax(all_logits, temperature)
    confidence = one.max(axis=1)
    differs = confidence[one.argmax(axis=1) != every.argmax(axis=1)]
    allowed = math.floor(max_changed * len(confidence))
    threshold = 0.0
    if len(differs) > allowed:
        worst = float(np.sort(differs)[::-1][allowed])
        threshold = math.floor(worst * 1e4 + 1) / 1e4  # strictly above it
    views = AdaptiveViews(all_views_below=threshold, one_view_temperature=one_temperature)
    served = mix(one, every, threshold)
    report = {
        "max_changed_answers": max_changed,
        "all_views_below": threshold,
        "one_view_temperature": round(one_temperature, 4),
        "val_accuracy": {
            "one": accuracy(one, labels),
            "all": accuracy(every, labels),
            "adaptive": accuracy(served, labels),
        },
        "val_changed_answers": round(float(np.mean(served.argmax(1) != every.argmax(1))), 4),
        "val_passes_per_image": passes(confidence, threshold, all_passes),
        "val_adaptive": calibration.summary(served, labels),
    }
    return views, report


def mix(one: np.ndarray, every: np.ndarray, threshold: float) -> np.ndarray:
    """What the graph serves, from both paths' probabilities."""
    return np.where((one.max(axis=1) < threshold)[:, None], every, one)


def passes(one_view_confidence: np.ndarray, threshold: float, all_passes: int) -> float:
    """Mean network passes per image: one, plus the rest for the images below the threshold."""
    return round(1 + (all_passes - 1) * float(np.mean(one_view_confidence < threshold)), 3)


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return round(float(np.mean(probabilities.argmax(axis=1) == labels)), 4)


def uncalibrated(
    served: np.ndarray, one_view: np.ndarray, views: AdaptiveViews, temperature: float
) -> np.ndarray:
    """The served probabilities before their temperatures, each row undone with its path's."""
    unsure = (one_view.max(axis=1) < views.all_views_below)[:, None]
    return np.where(
        unsure,
        calibration.uncalibrated(served, temperature),
        calibration.uncalibrated(served, views.one_view_temperature),
    )


def rebuild(version_dir: Path, x_train: np.ndarray) -> Any:
    """An exported `fast` version's network as a Keras model, weights and all.

    Built from the hyperparameters its metadata records, normalised by the training split it
    trained on (the statistics are constants in the graph, not variables), every variable read
    back from the SavedModel by name; then checked against its golden set, so a wrong split or
    a missed weight stops here.
    """
    import tensorflow as tf

    from training.export import read_metadata, view_logits
    from training.recipe import fast_network

    metadata = read_metadata(version_dir)
    if metadata.get("architecture", {}).get("name") != "fast":
        raise ValueError(f"{version_dir} is not a `fast` version; only those can be rebuilt")
    hyp = metadata["training"]["hyperparameters"]
    model = fast_network(hyp, x_train, len(metadata["labels"]))
    saved = {v.name.removesuffix(":0"): v for v in tf.saved_model.load(str(version_dir)).variables}
    missing = [w.path for w in model.weights if w.path not in saved]
    if missing:
        raise ValueError(f"{version_dir} has no variables {missing}")
    for weight in model.weights:
        weight.assign(saved[weight.path].numpy())
    with np.load(version_dir / "golden.npz") as golden:
        images, expected = golden["images"], golden["probabilities"]
    serving = metadata["serving"]
    logits = view_logits(model, tf.constant(images, tf.float32), serving["tta_level"]).numpy()
    difference = np.abs(calibration.softmax(logits, serving["temperature"]) - expected).max()
    if not difference <= 1e-4:
        raise ValueError(f"the rebuilt network misses golden.npz by {difference:.2g}")
    return model


def derive(source: Path, data: str | None, version: int | None = None) -> Path:
    """Export `source`'s weights with adaptive views as the next version of its model, then
    measure, record and publish it with the training run's own steps."""
    from training.data import load_dataset, split_validation
    from training.evaluate import validation_logits
    from training.export import TTA_VIEWS, export_model, read_metadata, write_metadata
    from training.measure import measure_export, measured_record
    from training.publish import publish, reserve
    from training.serving_choice import Serving

    original = read_metadata(source)
    dataset = load_dataset(data)
    split = split_validation(dataset.x_train, dataset.y_train, original["dataset"]["val_size"])
    model = rebuild(source, split.x_train)
    level, temperature = original["serving"]["tta_level"], original["serving"]["temperature"]
    views, report = choose(
        validation_logits(model, split.x_val, 0),
        validation_logits(model, split.x_val, level),
        split.y_val,
        temperature,
        TTA_VIEWS[level],
    )
    print(f"views on validation: {report}", flush=True)
    serving = Serving(
        level, temperature, views, {**original.get("serving_choice", {}), "views": report}
    )

    version, final, partial = reserve(source.parent, version)
    kept = ("name", "architecture", "dataset", "training")
    record = export_model(
        model,
        partial,
        labels=original["labels"],
        metadata={**{key: original[key] for key in kept}, "version": version},
        tta_level=level,
        temperature=temperature,
        views=views,
    )
    measured = measure_export(partial, dataset, split, split.x_train, serving, seed=0)
    derived_from = {
        "version": f"{original['name']}/{original['version']}",
        "how": "its weights, exported with adaptive views by `python -m training.views`; "
        "`training` is that version's run",
    }
    write_metadata(
        partial,
        measured_record(record, measured, serving, dataset.y_test, derived_from=derived_from),
    )
    publish(partial, final)
    return final


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.views", description=__doc__)
    parser.add_argument("source", type=Path, help="an exported `fast` version folder")
    parser.add_argument("--data", default=None, help="CIFAR-10 copy (default: the offline one)")
    parser.add_argument("--version", type=int, default=None, help="default: the next free")
    args = parser.parse_args(argv)
    final = derive(args.source, args.data, args.version)
    print(f"exported {final}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
