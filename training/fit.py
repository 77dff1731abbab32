"""The fit loop the recipes share: the input pipelines, per-epoch checkpoints for --resume, the
history and the fit clock. What trains and how is training/recipe.py; what a TF_CONFIG cluster
needs besides is training/multiworker.py.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf

from training import hardware
from training.multiworker import allow_multi_worker_fit, same_start_on_every_worker, shard_by_data
from training.report import HISTORY_FILE

if TYPE_CHECKING:
    from training.recipe import Built


class TrainingInterrupted(Exception):
    """Ctrl-C during fit; the last completed epoch's checkpoint is kept for `--resume`."""


def make_train_dataset(
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    num_classes: int,
    one_hot: bool,
    augment,
    epoch: tf.Variable,
    seed: int,
) -> tf.data.Dataset:
    """Shuffled batches of float pixels 0..255; `augment(images, epoch)` runs on whole batches."""

    def prepare(images: tf.Tensor, labels: tf.Tensor):
        images = augment(tf.cast(images, tf.float32), epoch)
        labels = tf.one_hot(tf.cast(labels, tf.int32), num_classes) if one_hot else labels
        return images, labels

    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size, drop_remainder=True)
        .map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(shard_by_data())
    )


def make_eval_dataset(
    x: np.ndarray, y: np.ndarray, *, batch_size: int, num_classes: int, one_hot: bool
) -> tf.data.Dataset:
    def prepare(images: tf.Tensor, labels: tf.Tensor):
        labels = tf.one_hot(tf.cast(labels, tf.int32), num_classes) if one_hot else labels
        return tf.cast(images, tf.float32), labels

    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(batch_size)
        .map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(shard_by_data())
    )


class EpochCounter(keras.callbacks.Callback):
    """Keeps the current epoch in a variable the input pipeline reads (flip parity, phases)."""

    def __init__(self, epoch: tf.Variable) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch.assign(epoch)


class FitClock(keras.callbacks.Callback):
    """Measures fit time per completed epoch and keeps it beside the checkpoint for --resume."""

    def __init__(self, path: Path, resume: bool) -> None:
        super().__init__()
        self.path = path
        previous = json.loads(path.read_text()) if resume and path.is_file() else {}
        self.prior_seconds = float(previous.get("fit_seconds", 0.0))
        self.seconds = self.prior_seconds

    def on_train_begin(self, logs=None) -> None:
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self.seconds = self.prior_seconds + time.perf_counter() - self.start
        self.path.write_text(json.dumps({"epoch": epoch + 1, "fit_seconds": self.seconds}))


def fit(
    built: Built,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    resume: bool,
    strategy: tf.distribute.Strategy,
    worker: hardware.Worker | None,
    work_dir: Path,
) -> float:
    """model.fit with per-epoch checkpoints (`--resume`), a CSV history and a fit clock in
    `work_dir`; returns the fit's wall-clock seconds, earlier sessions of a resumed run included."""
    model = built.model
    num_classes = int(model.output_shape[-1])
    epoch = tf.Variable(0, trainable=False, dtype=tf.int64, name="epoch")
    train_ds = make_train_dataset(
        *train,
        batch_size=batch_size,
        num_classes=num_classes,
        one_hot=built.one_hot,
        augment=built.augment,
        epoch=epoch,
        seed=seed,
    )
    val_ds = None
    if len(validation[0]):
        val_ds = make_eval_dataset(
            *validation, batch_size=1000, num_classes=num_classes, one_hot=built.one_hot
        )
    if work_dir.exists() and not resume:
        shutil.rmtree(work_dir)  # a fresh run must not silently continue an old one
    work_dir.mkdir(parents=True, exist_ok=True)
    clock = FitClock(work_dir / "fit_clock.json", resume)
    callbacks = [
        EpochCounter(epoch),
        keras.callbacks.BackupAndRestore(str(work_dir / "backup"), delete_checkpoint=False),
        *built.callbacks,
        keras.callbacks.CSVLogger(str(work_dir / HISTORY_FILE), append=resume),
        clock,
    ]
    if worker:
        allow_multi_worker_fit(model)
        same_start_on_every_worker(strategy, work_dir / "backup")
    try:
        with strategy.scope():
            model.fit(
                train_ds,
                epochs=epochs,
                validation_data=val_ds,
                callbacks=callbacks,
                shuffle=False,  # the dataset shuffles itself
                verbose=1,
            )
    except KeyboardInterrupt as interrupt:
        raise TrainingInterrupted(
            f"interrupted; the last completed epoch's checkpoint is in {work_dir / 'backup'}. "
            "Run the same command with --resume to continue."
        ) from interrupt
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as error:
        if worker is None:
            raise
        raise hardware.ClusterError(
            f"{worker.describe()}: the cluster lost a worker, so this one stops too. Each "
            f"worker keeps its last epoch's checkpoint: start all {worker.size} again with "
            f"--resume. TensorFlow: {hardware.tf_reason(error)}"
        ) from error
    return clock.seconds
