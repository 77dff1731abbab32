"""The training run, top to bottom: data, build, fit, choose serving, export, evaluate, report,
publish.

`run` tells it in those steps, each a function below it in that order. The recipes the steps
follow (hyperparameters, schedule, lookahead, augmentation, `build`) are training/recipe.py; the
fit loop is training/fit.py, the multi-worker workarounds training/multiworker.py. metadata.json
is assembled in memory as the steps go and written once, when everything in it is measured.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from training import hardware, recipe
from training.config import RunConfig
from training.data import Dataset, Split, load_dataset, split_validation
from training.export import export_model, write_metadata
from training.fit import fit
from training.measure import Measured, measure_export, measured_record
from training.multiworker import checkpoint_dir, leave_after_fit, wait_for_every_worker
from training.publish import publish, reserve
from training.report import HISTORY_FILE, plot_reliability, write_model_summary, write_test_figures
from training.serving_choice import Serving, choose_serving


@dataclass(frozen=True)
class Data:
    dataset: Dataset
    split: Split
    x_train: np.ndarray  # the training split as fit sees it: limited, pre-mirrored if asked
    y_train: np.ndarray
    steps_per_epoch: int


def run(config: RunConfig) -> Path | None:
    """Train, export to models/<name>/<version>/, measure through the export, write the report.

    In a TF_CONFIG cluster every worker trains; only the chief exports and returns the version
    folder, the others return None."""
    machine = start(config)
    hyp = recipe.hyperparameters(config)
    data = load_data(config, hyp)
    work_dir = checkpoint_dir(config.checkpoints_dir, config.name, machine.worker)
    with hardware.precision_policy(machine.precision):
        built = build_model(config, hyp, data, machine)
        fit_seconds = fit(
            built,
            (data.x_train, data.y_train),
            (data.split.x_val, data.split.y_val),
            epochs=recipe.total_epochs(config.arch, hyp),
            batch_size=hyp["batch_size"],
            seed=config.seed,
            resume=config.resume,
            strategy=machine.strategy,
            worker=machine.worker,
            work_dir=work_dir,
        )
        if machine.worker and not machine.worker.is_chief:
            leave_after_fit(machine.strategy, machine.worker, work_dir)  # the chief exports
            return None
        serving = Serving(*choose_serving(built.model, data.split.x_val, data.split.y_val, hyp))
        version, version_dir, partial_dir = reserve(
            config.models_dir / config.name, config.output_version
        )
        record = export(built.model, partial_dir, version, config, hyp, data, serving)
    measured = measure_export(
        partial_dir, data.dataset, data.split, data.x_train, serving, config.seed
    )
    training = training_record(config, hyp, machine, data, fit_seconds)
    record = measured_record(record, measured, serving, data.dataset.y_test, training=training)
    write_metadata(partial_dir, record)  # the one write of the whole record
    report(partial_dir / "report", built.model, work_dir, data, measured, serving.temperature)
    publish(partial_dir, version_dir)
    shutil.rmtree(work_dir / "backup", ignore_errors=True)  # finished: nothing left to resume
    print(summary_line(record, fit_seconds, serving, version_dir), flush=True)
    if machine.worker:
        wait_for_every_worker(machine.strategy, machine.worker)
    return version_dir


def start(config: RunConfig) -> hardware.Machine:
    """Precision, hardware and distribution strategy, each said as soon as it is known (in a
    TF_CONFIG cluster the strategy waits for every worker)."""
    precision = hardware.choose_precision(config.precision)
    description = hardware.describe()
    print(
        f"precision: {precision.name} ({precision.reason}) | hardware: {description} | "
        f"malloc: {hardware.allocator()}",
        flush=True,
    )
    # In a TF_CONFIG cluster the strategy must exist before any other TensorFlow op runs.
    worker = hardware.cluster_worker()
    strategy = hardware.choose_strategy(worker, config.cluster_wait_s)
    # (tf.distribute.MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy)
    strategy_name = "MultiWorkerMirroredStrategy" if worker else type(strategy).__name__
    print(
        f"strategy: {strategy_name} | {worker.describe() if worker else 'one machine'}",
        flush=True,
    )
    return hardware.Machine(precision, description, worker, strategy, strategy_name)


def load_data(config: RunConfig, hyp: dict[str, Any]) -> Data:
    """The dataset, its validation split, and the training images as fit will see them."""
    dataset = load_dataset(config.data)
    split = split_validation(dataset.x_train, dataset.y_train, config.val_size)
    x_train, y_train = split.x_train, split.y_train
    if config.limit_train:
        x_train, y_train = x_train[: config.limit_train], y_train[: config.limit_train]
    batch_size = hyp["batch_size"]
    steps_per_epoch = len(x_train) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(x_train)} training images are fewer than a batch ({batch_size})")
    if config.arch == "fast" and hyp["flip"] == "alternating":
        x_train = recipe.mirror_half(x_train, config.seed)
    return Data(dataset, split, x_train, y_train, steps_per_epoch)


def build_model(
    config: RunConfig, hyp: dict[str, Any], data: Data, machine: hardware.Machine
) -> recipe.Built:
    """The recipe's model, seeded and compiled under the strategy, with its augmentation."""
    keras.utils.set_random_seed(config.seed)
    total_steps = data.steps_per_epoch * recipe.total_epochs(config.arch, hyp)
    dataset = data.dataset
    with machine.strategy.scope():
        built = recipe.build(config.arch, hyp, data.x_train, len(dataset.labels), total_steps)
    print(
        f"data: {dataset.source} (train {len(data.x_train)}, val {len(data.split.x_val)}, "
        f"test {len(dataset.x_test)}) | arch: {config.arch} | "
        f"params: {built.model.count_params():,}",
        flush=True,
    )
    return built


def export(
    model: keras.Model,
    partial_dir: Path,
    version: int,
    config: RunConfig,
    hyp: dict[str, Any],
    data: Data,
    serving: Serving,
) -> dict[str, Any]:
    """The SavedModel in `partial_dir`, and metadata.json's record of it, kept in memory: which
    model and version, what it learnt from, and what it serves."""
    dataset = data.dataset
    record = {
        "name": config.name,
        "version": version,
        "architecture": {
            "name": config.arch,
            "description": recipe.describe_architecture(config.arch, hyp),
            "parameters": model.count_params(),
        },
        "dataset": {
            "name": dataset.name,
            "source": dataset.source,
            "train_size": len(data.x_train),
            "val_size": len(data.split.x_val),
            "test_size": len(dataset.x_test),
        },
    }
    return export_model(
        model,
        partial_dir,
        labels=dataset.labels,
        metadata=record,
        tta_level=serving.tta_level,
        temperature=serving.temperature,
        views=serving.views,
    )


def training_record(
    config: RunConfig,
    hyp: dict[str, Any],
    machine: hardware.Machine,
    data: Data,
    fit_seconds: float,
) -> dict[str, Any]:
    """metadata.json's `training`: how it trained, on what."""
    worker = machine.worker
    return {
        "epochs": recipe.total_epochs(config.arch, hyp),
        "phases": recipe.phases(config.arch, hyp),
        "batch_size": hyp["batch_size"],
        "steps_per_epoch": data.steps_per_epoch,
        "seed": config.seed,
        "wall_clock_seconds": round(fit_seconds, 1),
        "hardware": machine.description,
        "precision": machine.precision.name,
        "precision_reason": machine.precision.reason,
        "allocator": hardware.allocator(),
        "strategy": machine.strategy_name,
        "cluster": worker and {"workers": worker.size, "chief": worker.task_type + ":0"},
        "hyperparameters": {k: list(v) if isinstance(v, tuple) else v for k, v in hyp.items()},
    }


def report(
    report_dir: Path,
    model: keras.Model,
    work_dir: Path,
    data: Data,
    measured: Measured,
    temperature: float,
) -> None:
    """The history, the model summary and the figures beside the model (training.report)."""
    dataset = data.dataset
    report_dir.mkdir(exist_ok=True)
    shutil.copy(work_dir / HISTORY_FILE, report_dir / HISTORY_FILE)
    write_model_summary(model, report_dir / "model_summary.txt")
    write_test_figures(
        report_dir, dataset.x_test, dataset.y_test, measured.test.predictions, dataset.labels
    )
    curves = {
        "before": measured.uncalibrated,
        f"after (T = {temperature:.2f})": measured.probabilities,
    }
    plot_reliability(curves, dataset.y_test, report_dir / "calibration.png")


def summary_line(
    record: dict[str, Any], fit_seconds: float, serving: Serving, version_dir: Path
) -> str:
    metrics = record["metrics"]
    return (
        f"test accuracy {metrics['test_accuracy']:.4f} | val accuracy {metrics['val_accuracy']} | "
        f"ECE {metrics['test_calibration']['after']['ece']:.4f} | "
        f"fit {fit_seconds:.0f} s | TTA level {serving.tta_level} | "
        f"T {serving.temperature:.3f} | exported {version_dir}"
    )
