"""The training run, top to bottom: data, model, fit, evaluate through the export, report.

Hyperparameters live in the two dicts below, one per architecture; the CLI (`__main__.py`) only
overrides epochs, batch size and the like, and every value used is recorded in metadata.json.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from training.data import Dataset, load_dataset, split_validation
from training.evaluate import evaluate_saved_model, predict_probabilities, score
from training.export import emits_probabilities, export_model, write_metadata
from training.models import make_fast_model, make_seed_model
from training.report import HISTORY_FILE, write_model_summary, write_test_figures

# The default recipe, airbench94-shaped and sized so a run fits in ~25 min on 2 CPU cores.
FAST_HYP: dict[str, Any] = {
    "epochs": 10,  # passes over the 45k training images, all augmented
    "batch_size": 512,  # images per SGD step
    "lr": 1.5,  # peak learning rate for the mean loss (airbench's 11.5 per 1024, sum loss)
    "lr_start_factor": 0.2,  # warm-up starts at this fraction of the peak...
    "warmup_fraction": 0.2,  # ...and reaches the peak after this fraction of all steps, then
    #                         decays linearly to 0 at the last step
    "momentum": 0.85,  # Nesterov momentum
    "weight_decay": 5e-5,  # decoupled decay per step, multiplied by the current learning rate
    "label_smoothing": 0.2,  # target = 0.8 one-hot + 0.2 uniform
    "ema_momentum": 0.99,  # per-step EMA of the weights, swapped in at the end of fit
    "widths": (32, 128, 128),  # filters of the three conv blocks (airbench94: 64/256/256)
    "batchnorm_momentum": 0.9,  # Keras convention: weight of the old running statistic
    "logit_scale": 1 / 9,  # fixed scale on the head's output (airbench's scaling_factor)
    "translate_px": 2,  # random translation: reflect-pad this many pixels, random crop back
    "flip": True,  # random horizontal flip
    "tta": "auto",  # flip test-time augmentation in the export: "auto" keeps it if val improves
}

# The blog's network and schedule, unchanged: two phases, plain then augmented.
SEED_HYP: dict[str, Any] = {
    "epochs": 50,  # phase 1: epochs on plain data
    "aug_epochs": 50,  # phase 2: epochs with augmentation
    "batch_size": 32,  # images per Adam step
    "optimizer": "adam",  # Keras defaults (learning rate 0.001)
    "shift_fraction": 0.1,  # phase 2 width/height shift, as a fraction of the image side
    "flip": True,  # phase 2 random horizontal flip
    "tta": "auto",
}

ARCHITECTURES = {
    "fast": "airbench94-shaped: 2x2 patch-whitening conv, 3 conv blocks "
    "(32/128/128) with max-pool and BatchNorm, global max-pool head; label smoothing 0.2, "
    "Nesterov SGD with warm-up and linear decay, weight EMA (kept if it validates better), "
    "flip + 2 px translate",
    "seed": "the blog's VGG-style CNN: [Conv-BN]x2-MaxPool blocks of 32/64/128 filters, "
    "Dropout 0.2, Dense 1024, Dropout 0.2, softmax; Adam, sparse cross-entropy",
}


@dataclass(frozen=True)
class RunConfig:
    arch: str = "fast"
    data: str | None = None
    epochs: int | None = None
    aug_epochs: int | None = None
    batch_size: int | None = None
    val_size: int = 5000
    seed: int = 0
    name: str = "cifar10"
    models_dir: Path = Path("models")
    checkpoints_dir: Path = Path("checkpoints")
    resume: bool = False
    output_version: int | None = None
    limit_train: int | None = None  # development: train on the first N images only


class TrainingInterrupted(Exception):
    """Ctrl-C during fit; the last completed epoch's checkpoint is kept for `--resume`."""


class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Per-step learning rate: linear from start_factor*peak to peak, then linear to 0."""

    def __init__(
        self, peak: float, total_steps: int, warmup_steps: int, start_factor: float = 0.2
    ) -> None:
        self.peak = peak
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.start_factor = start_factor

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = tf.maximum(float(self.warmup_steps), 1.0)
        rising = self.start_factor + (1.0 - self.start_factor) * step / warmup
        decay_len = tf.maximum(float(self.total_steps - self.warmup_steps), 1.0)
        falling = 1.0 - (step - self.warmup_steps) / decay_len
        factor = tf.where(step < self.warmup_steps, rising, falling)
        return self.peak * tf.clip_by_value(factor, 0.0, 1.0)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "start_factor": self.start_factor,
        }


def flip_and_translate(images: tf.Tensor, translate_px: int, flip: bool) -> tf.Tensor:
    """Per-image random horizontal flip and reflect-padded translation, on a whole batch."""
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    if flip:
        mirrored = tf.random.uniform([batch, 1, 1, 1]) < 0.5
        images = tf.where(mirrored, tf.reverse(images, axis=[2]), images)
    if translate_px:
        p = translate_px
        padded = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]], mode="REFLECT")
        dy = tf.random.uniform([batch, 1], 0, 2 * p + 1, dtype=tf.int32)
        dx = tf.random.uniform([batch, 1], 0, 2 * p + 1, dtype=tf.int32)
        rows = dy + tf.range(height)[tf.newaxis]
        cols = dx + tf.range(width)[tf.newaxis]
        images = tf.gather(padded, rows, axis=1, batch_dims=1)
        images = tf.gather(images, cols, axis=2, batch_dims=1)
    return images


def make_train_dataset(
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    num_classes: int,
    one_hot: bool,
    augment,
    augment_on: tf.Variable,
    seed: int,
) -> tf.data.Dataset:
    """Shuffled batches of float pixels 0..255; `augment` runs on whole batches when switched on."""

    def prepare(images: tf.Tensor, labels: tf.Tensor):
        images = tf.cast(images, tf.float32)
        images = tf.cond(augment_on, lambda: augment(images), lambda: images)
        labels = tf.one_hot(tf.cast(labels, tf.int32), num_classes) if one_hot else labels
        return images, labels

    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size, drop_remainder=True)
        .map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
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
    )


class AugmentationPhase(keras.callbacks.Callback):
    """Switches augmentation on from epoch `first_epoch` (the seed's second phase)."""

    def __init__(self, flag: tf.Variable, first_epoch: int) -> None:
        super().__init__()
        self.flag = flag
        self.first_epoch = first_epoch

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.flag.assign(epoch >= self.first_epoch)


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


class KeepRawWeights(keras.callbacks.Callback):
    """Keeps the last epoch's raw weights: fit then swaps in the EMA, and the run keeps the EMA
    only if it validates better (with few steps the EMA still remembers the initial weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[np.ndarray] | None = None
        self.val_accuracy: float | None = None

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if epoch == self.params["epochs"] - 1:
            self.weights = [w.copy() for w in self.model.get_weights()]
            self.val_accuracy = (logs or {}).get("val_accuracy")


def choose_strategy() -> tuple[tf.distribute.Strategy, str]:
    """All visible GPUs through MirroredStrategy, else the default (one GPU or the CPU)."""
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy(), f"{len(gpus)} GPUs ({gpu_name(gpus[0])})"
    if gpus:
        return tf.distribute.get_strategy(), f"GPU ({gpu_name(gpus[0])})"
    return tf.distribute.get_strategy(), f"CPU ({cpu_name()}, {os.cpu_count()} cores)"


def gpu_name(device: tf.config.PhysicalDevice) -> str:
    return tf.config.experimental.get_device_details(device).get("device_name", device.name)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def next_version(model_root: Path) -> int:
    versions = [int(p.name) for p in model_root.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def build(
    arch: str, hyp: dict[str, Any], x_train: np.ndarray, num_classes: int, total_steps: int
) -> tuple[keras.Model, Any, bool]:
    """The model, its augmentation and whether labels are one-hot, compiled for training."""
    input_shape = x_train.shape[1:]
    if arch == "fast":
        model = make_fast_model(
            input_shape,
            num_classes,
            widths=hyp["widths"],
            batchnorm_momentum=hyp["batchnorm_momentum"],
            logit_scale=hyp["logit_scale"],
            train_images=x_train,
        )
        schedule = WarmupLinearDecay(
            hyp["lr"],
            total_steps,
            round(hyp["warmup_fraction"] * total_steps),
            hyp["lr_start_factor"],
        )
        optimizer = keras.optimizers.SGD(
            schedule,
            momentum=hyp["momentum"],
            nesterov=True,
            weight_decay=hyp["weight_decay"],
            use_ema=hyp["ema_momentum"] > 0,
            ema_momentum=hyp["ema_momentum"] or 0.99,
        )
        loss = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=hyp["label_smoothing"]
        )
        model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])

        def augment(images: tf.Tensor) -> tf.Tensor:
            return flip_and_translate(images, hyp["translate_px"], hyp["flip"])

        return model, augment, True

    model = make_seed_model(input_shape, num_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    shift = hyp["shift_fraction"]
    layers = [keras.layers.RandomTranslation(shift, shift, fill_mode="nearest")]
    if hyp["flip"]:
        layers.insert(0, keras.layers.RandomFlip("horizontal"))
    augmenter = keras.Sequential(layers)

    def augment_seed(images: tf.Tensor) -> tf.Tensor:
        return augmenter(images, training=True)

    return model, augment_seed, False


def flip_tta_gain(model: keras.Model, x_val: np.ndarray, y_val: np.ndarray) -> tuple[float, float]:
    """Validation accuracy without and with flip TTA, to decide whether the export uses it."""
    pixels = x_val.astype(np.float32)
    plain = model.predict(pixels, batch_size=1000, verbose=0)
    mirrored = model.predict(pixels[:, :, ::-1], batch_size=1000, verbose=0)
    if not emits_probabilities(model):  # logits: compare probabilities, as the export serves
        plain, mirrored = tf.nn.softmax(plain).numpy(), tf.nn.softmax(mirrored).numpy()
    without = float(np.mean(plain.argmax(1) == y_val))
    with_tta = float(np.mean((plain + mirrored).argmax(1) == y_val))
    return without, with_tta


def choose_ema_or_raw(
    model: keras.Model, raw: KeepRawWeights, val_ds: tf.data.Dataset | None
) -> dict[str, Any]:
    """After fit the model holds the EMA weights; restore the raw ones if they validate better."""
    if not model.optimizer.use_ema or val_ds is None or raw.weights is None:
        return {"used": bool(model.optimizer.use_ema)}
    ema_accuracy = float(model.evaluate(val_ds, verbose=0, return_dict=True)["accuracy"])
    raw_accuracy = float(raw.val_accuracy)
    use_ema = ema_accuracy > raw_accuracy
    if not use_ema:
        model.set_weights(raw.weights)
    return {
        "used": use_ema,
        "val_accuracy_ema": round(ema_accuracy, 4),
        "val_accuracy_raw": round(raw_accuracy, 4),
    }


def run(config: RunConfig) -> Path:
    """Train, export to models/<name>/<version>/, measure through the export, write the report."""
    # --- data -------------------------------------------------------------------------------
    dataset: Dataset = load_dataset(config.data)
    split = split_validation(dataset.x_train, dataset.y_train, config.val_size)
    x_train, y_train = split.x_train, split.y_train
    if config.limit_train:
        x_train, y_train = x_train[: config.limit_train], y_train[: config.limit_train]
    num_classes = len(dataset.labels)

    # --- hyperparameters ----------------------------------------------------------------------
    hyp = dict(FAST_HYP if config.arch == "fast" else SEED_HYP)
    for key, value in (
        ("epochs", config.epochs),
        ("aug_epochs", config.aug_epochs),
        ("batch_size", config.batch_size),
    ):
        if value is not None:
            if key not in hyp:
                raise ValueError(f"--{key.replace('_', '-')} does not apply to --arch fast")
            hyp[key] = value
    plain_epochs = hyp["epochs"] if config.arch == "seed" else 0
    total_epochs = plain_epochs + (hyp["aug_epochs"] if config.arch == "seed" else hyp["epochs"])
    batch_size = hyp["batch_size"]
    steps_per_epoch = len(x_train) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(x_train)} training images are fewer than a batch ({batch_size})")

    # --- model --------------------------------------------------------------------------------
    keras.utils.set_random_seed(config.seed)
    strategy, device = choose_strategy()
    with strategy.scope():
        model, augment, one_hot = build(
            config.arch, hyp, x_train, num_classes, steps_per_epoch * total_epochs
        )
    print(
        f"data: {dataset.source} (train {len(x_train)}, val {len(split.x_val)}, "
        f"test {len(dataset.x_test)}) | arch: {config.arch} | "
        f"params: {model.count_params():,} | device: {device} | precision: float32",
        flush=True,
    )

    # --- fit ----------------------------------------------------------------------------------
    augment_on = tf.Variable(config.arch == "fast", trainable=False, name="augment_on")
    train_ds = make_train_dataset(
        x_train,
        y_train,
        batch_size=batch_size,
        num_classes=num_classes,
        one_hot=one_hot,
        augment=augment,
        augment_on=augment_on,
        seed=config.seed,
    )
    val_ds = (
        make_eval_dataset(
            split.x_val, split.y_val, batch_size=1000, num_classes=num_classes, one_hot=one_hot
        )
        if len(split.x_val)
        else None
    )
    work_dir = config.checkpoints_dir / config.name
    if work_dir.exists() and not config.resume:
        shutil.rmtree(work_dir)  # a fresh run must not silently continue an old one
    work_dir.mkdir(parents=True, exist_ok=True)
    clock = FitClock(work_dir / "fit_clock.json", config.resume)
    raw_weights = KeepRawWeights()
    callbacks = [
        keras.callbacks.BackupAndRestore(str(work_dir / "backup"), delete_checkpoint=False),
        keras.callbacks.CSVLogger(str(work_dir / HISTORY_FILE), append=config.resume),
        clock,
        raw_weights,
    ]
    if config.arch == "seed":
        callbacks.insert(0, AugmentationPhase(augment_on, plain_epochs))
    try:
        model.fit(
            train_ds,
            epochs=total_epochs,
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
    fit_seconds = clock.seconds
    ema_check = choose_ema_or_raw(model, raw_weights, val_ds) if config.arch == "fast" else {}

    # --- evaluate and export --------------------------------------------------------------------
    tta = False
    tta_check: dict[str, float] = {}
    if len(split.x_val) and hyp["tta"] == "auto":
        without, with_tta = flip_tta_gain(model, split.x_val, split.y_val)
        tta = with_tta > without
        tta_check = {
            "val_accuracy_without": round(without, 4),
            "val_accuracy_with": round(with_tta, 4),
        }
    model_root = config.models_dir / config.name
    version = config.output_version or next_version(model_root)
    version_dir = model_root / str(version)
    if version_dir.exists() and any(version_dir.iterdir()):
        raise FileExistsError(f"{version_dir} exists and is not empty")
    metadata: dict[str, Any] = {
        "name": config.name,
        "version": version,
        "architecture": {
            "name": config.arch,
            "description": ARCHITECTURES[config.arch],
            "parameters": model.count_params(),
        },
        "dataset": {
            "name": dataset.name,
            "source": dataset.source,
            "train_size": len(x_train),
            "val_size": len(split.x_val),
            "test_size": len(dataset.x_test),
        },
    }
    export_model(model, version_dir, labels=dataset.labels, metadata=metadata, tta=tta)

    # Measured through the exported signature, exactly as the app will call it.
    test = evaluate_saved_model(version_dir, dataset.x_test, dataset.y_test, dataset.labels)
    val_accuracy = None
    if len(split.x_val):
        val_accuracy = score(
            predict_probabilities(version_dir, split.x_val), split.y_val, dataset.labels
        ).accuracy
    phases = (
        [{"epochs": total_epochs, "augmentation": "flip + 2 px reflect-padded translate"}]
        if config.arch == "fast"
        else [
            {"epochs": plain_epochs, "augmentation": "none"},
            {"epochs": total_epochs - plain_epochs, "augmentation": "shift 0.1 + flip"},
        ]
    )
    full = {
        **json.loads((version_dir / "metadata.json").read_text()),
        "metrics": {
            "test_accuracy": test.accuracy,
            "val_accuracy": val_accuracy,
            "per_class_accuracy": test.per_class_accuracy,
            "measured_through": "serving_default signature of this SavedModel",
        },
        "training": {
            "epochs": total_epochs,
            "phases": phases,
            "batch_size": batch_size,
            "steps_per_epoch": steps_per_epoch,
            "seed": config.seed,
            "wall_clock_seconds": round(fit_seconds, 1),
            "hardware": device,
            "precision": "float32",
            "strategy": type(strategy).__name__,
            "weight_ema": ema_check,
            "flip_tta": tta,
            "flip_tta_check": tta_check,
            "hyperparameters": {k: list(v) if isinstance(v, tuple) else v for k, v in hyp.items()},
        },
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    write_metadata(version_dir, full)

    # --- report ---------------------------------------------------------------------------------
    report_dir = version_dir / "report"
    report_dir.mkdir(exist_ok=True)
    shutil.copy(work_dir / HISTORY_FILE, report_dir / HISTORY_FILE)
    write_model_summary(model, report_dir / "model_summary.txt")
    write_test_figures(report_dir, dataset.x_test, dataset.y_test, test.predictions, dataset.labels)
    shutil.rmtree(work_dir / "backup", ignore_errors=True)  # finished: nothing left to resume
    print(
        f"test accuracy {test.accuracy:.4f} | val accuracy {val_accuracy} | "
        f"fit {fit_seconds:.0f} s | flip TTA {tta} | exported {version_dir}",
        flush=True,
    )
    return version_dir
