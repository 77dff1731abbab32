"""The training run, top to bottom: data, model, fit, evaluate through the export, report.

Hyperparameters live in the two dicts below, one per architecture; the CLI (`__main__.py`) only
overrides epochs, batch size and the like, and every value used is recorded in metadata.json.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from app.contract import is_version_name
from training import calibration, hardware
from training import views as adaptive
from training.data import Dataset, load_dataset, split_validation
from training.evaluate import predict_probabilities, score
from training.export import (
    GOLDEN_SIZE,
    TTA_LEVELS,
    TTA_VIEWS,
    AdaptiveViews,
    export_model,
    view_logits,
    write_golden,
    write_metadata,
)
from training.models import make_fast_model, make_seed_model
from training.quantize import quantize_and_measure
from training.report import (
    HISTORY_FILE,
    plot_reliability,
    write_model_summary,
    write_test_figures,
)

# The default recipe: airbench94 (Keller Jordan's CIFAR-10 speed run, 94.0 % in 9.9 epochs) in
# Keras. Its lr and weight decay are given per 1024 images of a summed loss; these are the same
# steps for Keras's mean loss, with lr scaled linearly when --batch-size changes.
FAST_HYP: dict[str, Any] = {
    "epochs": 12,  # passes over the training images, all augmented (airbench: 9.9)
    "batch_size": 1024,  # images per SGD step
    "lr": 1.5,  # peak learning rate at batch 1024 (airbench's 11.5 per 1024 / (1 + 1/(1-0.85)))
    "lr_start_factor": 0.2,  # triangular schedule: starts at 0.2 x peak...
    "lr_peak_fraction": 0.23,  # ...reaches the peak after 23 % of the steps...
    "lr_end_factor": 0.07,  # ...and ends at 0.07 x peak
    "momentum": 0.85,  # Nesterov momentum
    "weight_decay": 0.0089,  # decoupled: each step shrinks weights by lr_t x this (airbench's
    #                         0.0153 per 1024 images, which its SGD applies through momentum)
    "bias_lr_multiplier": 64.0,  # BatchNorm shifts train this much faster
    "label_smoothing": 0.2,  # target = 0.8 one-hot + 0.2 uniform
    "lookahead_start_epoch": 3,  # from here, every 5 steps: weights <- EMA of weights
    "lookahead_decay": 0.95,  # per-step EMA decay, raised to 5 per update and warmed up by
    "lookahead_decay_power": 3.0,  # (step / total steps) ** 3: move fast early, average late
    "widths": (64, 256, 256),  # filters of the three conv blocks
    "activation": "gelu",
    "batchnorm_momentum": 0.6,  # Keras convention: weight of the old running statistic
    "logit_scale": 1 / 9,  # fixed scale on the head's output (airbench's scaling_factor)
    "translate_px": 2,  # random translation: reflect-pad this many pixels, random crop back
    "flip": "alternating",  # each image flipped at random once, then all mirrored every 2nd epoch
    "tta": "auto",  # test-time views served: 0, 1 (mirror), 2 (mirror + 1 px shifts), or "auto":
    #                 the one validating best (the cheapest on a tie)
    "calibrate": True,  # fit a temperature on the validation split and fold it into the export
    "adaptive_views": True,  # one view first, the others only below a validation-chosen
    #                          confidence (training.views); needs tta > 0 and a validation split
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
    "calibrate": True,
}


def describe_architecture(arch: str, hyp: dict[str, Any]) -> str:
    """The one-line description metadata.json keeps, built from the values that ran."""
    if arch == "fast":
        widths = "/".join(str(w) for w in hyp["widths"])
        return (
            f"airbench94: 2x2 patch-whitening conv, 3 conv blocks ({widths}) with max-pool, "
            f"BatchNorm (shift at {hyp['bias_lr_multiplier']:g}x lr, no scale) and "
            f"{hyp['activation'].upper()}, identity-initialised convs, global max-pool head; "
            f"label smoothing {hyp['label_smoothing']}, Nesterov SGD with a triangular schedule "
            f"and decoupled weight decay, lookahead from epoch {hyp['lookahead_start_epoch']}, "
            f"{hyp['flip']} flip + {hyp['translate_px']} px translate"
        )
    return (
        "the blog's VGG-style CNN: [Conv-BN]x2-MaxPool blocks of 32/64/128 filters, "
        "Dropout 0.2, Dense 1024, Dropout 0.2, softmax; Adam, sparse cross-entropy"
    )


@dataclass(frozen=True)
class RunConfig:
    arch: str = "fast"
    data: str | None = None
    epochs: int | None = None
    aug_epochs: int | None = None
    batch_size: int | None = None
    val_size: int = 5000
    seed: int = 0
    precision: str = "auto"
    tta: int | str | None = None  # 0, 1, 2 or "auto"; None: the recipe's ("auto")
    name: str = "cifar10"
    models_dir: Path = Path("models")
    checkpoints_dir: Path = Path("checkpoints")
    resume: bool = False
    output_version: int | None = None
    limit_train: int | None = None  # development: train on the first N images only
    cluster_wait_s: float = 600.0  # TF_CONFIG runs: how long each worker waits for the others


class TrainingInterrupted(Exception):
    """Ctrl-C during fit; the last completed epoch's checkpoint is kept for `--resume`."""


# Registered so the compiled model can be rebuilt from its config (the export's float32 twin).
@keras.saving.register_keras_serializable(package="training")
class TriangularSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Per-step learning rate: linear from start*peak up to peak, then linear down to end*peak."""

    def __init__(
        self, peak: float, total_steps: int, peak_step: int, start: float, end: float
    ) -> None:
        self.peak = peak
        self.total_steps = total_steps
        self.peak_step = peak_step
        self.start = start
        self.end = end

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        rise = tf.maximum(float(self.peak_step), 1.0)
        fall = tf.maximum(float(self.total_steps - self.peak_step), 1.0)
        rising = self.start + (1.0 - self.start) * step / rise
        falling = 1.0 + (self.end - 1.0) * (step - self.peak_step) / fall
        factor = tf.where(step < self.peak_step, rising, falling)
        return self.peak * tf.clip_by_value(factor, min(self.start, self.end), 1.0)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "peak_step": self.peak_step,
            "start": self.start,
            "end": self.end,
        }


def translate(images: tf.Tensor, pixels: int) -> tf.Tensor:
    """Per-image random translation by up to `pixels`, reflect-padded, on a whole batch."""
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [pixels, pixels], [pixels, pixels], [0, 0]], mode="REFLECT")
    dy = tf.random.uniform([batch, 1], 0, 2 * pixels + 1, dtype=tf.int32)
    dx = tf.random.uniform([batch, 1], 0, 2 * pixels + 1, dtype=tf.int32)
    rows = dy + tf.range(height)[tf.newaxis]
    cols = dx + tf.range(width)[tf.newaxis]
    images = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(images, cols, axis=2, batch_dims=1)


def mirror_half(x: np.ndarray, seed: int) -> np.ndarray:
    """A seeded random half of the images mirrored: the fixed start of alternating flip."""
    flip = np.random.default_rng(seed).random(len(x)) < 0.5
    return np.where(flip[:, None, None, None], x[:, :, ::-1], x)


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


def shard_by_data() -> tf.data.Options:
    """How a TF_CONFIG cluster splits the batches: tf.data's DATA auto-shard.

    Each worker builds the whole pipeline and keeps its 1/N part of every global batch. That is
    correct here because every worker shuffles the same in-memory arrays with the same seed, so
    the parts are disjoint and cover each batch (seen with two workers, epoch after epoch). FILE
    sharding needs files. An explicit `shard(N, index)` does not suit `fit`: tf.distribute
    splits every batch it is given N ways, so Keras would count N times fewer steps per epoch
    than the shard holds. The price: every worker also augments the parts it drops, small
    beside the model's step. On one machine these options change nothing.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


class EpochCounter(keras.callbacks.Callback):
    """Keeps the current epoch in a variable the input pipeline reads (flip parity, phases)."""

    def __init__(self, epoch: tf.Variable) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch.assign(epoch)


class Lookahead(keras.callbacks.Callback):
    """airbench's lookahead: from `start_epoch` on, every `every` steps the weights (BatchNorm
    statistics included) are pulled into an exponential average and replaced by it. The decay
    grows with training progress, so early steps move freely and the last ones average strongly.
    After a --resume the average restarts from the restored weights."""

    def __init__(
        self, start_epoch: int, total_steps: int, decay: float, power: float, every: int = 5
    ) -> None:
        super().__init__()
        self.start_epoch = start_epoch
        self.total_steps = total_steps
        self.decay = decay
        self.power = power
        self.every = every
        self.epoch = 0
        self.average: list[tf.Variable] | None = None

    def _weights(self) -> list[tf.Variable]:
        return [w for w in self.model.weights if w.dtype in ("float32", "float16", "bfloat16")]

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        step = int(self.model.optimizer.iterations.numpy())
        if self.epoch < self.start_epoch or step % self.every:
            return
        weights = self._weights()
        if self.average is None:
            self.average = [tf.Variable(w.value, trainable=False) for w in weights]
            return
        rho = self.decay**self.every * (step / self.total_steps) ** self.power
        for average, weight in zip(self.average, weights, strict=True):
            average.assign(rho * average + (1.0 - rho) * weight.value)
            weight.assign(average)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self.average is not None:
            for average, weight in zip(self.average, self._weights(), strict=True):
                weight.assign(average)


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


def next_version(model_root: Path) -> int:
    versions = [int(p.name) for p in model_root.glob("*") if p.is_dir() and is_version_name(p.name)]
    return max(versions, default=0) + 1


def build(
    arch: str, hyp: dict[str, Any], x_train: np.ndarray, num_classes: int, total_steps: int
) -> tuple[keras.Model, Any, bool, list[keras.callbacks.Callback]]:
    """The model compiled for training, its batch augmentation `augment(images, epoch)`, whether
    labels are one-hot, and the callbacks the recipe needs."""
    input_shape = x_train.shape[1:]
    if arch == "fast":
        model = make_fast_model(
            input_shape,
            num_classes,
            widths=hyp["widths"],
            batchnorm_momentum=hyp["batchnorm_momentum"],
            bias_lr_multiplier=hyp["bias_lr_multiplier"],
            logit_scale=hyp["logit_scale"],
            activation=hyp["activation"],
            train_images=x_train,
        )
        schedule = TriangularSchedule(
            hyp["lr"] * hyp["batch_size"] / 1024,
            total_steps,
            round(hyp["lr_peak_fraction"] * total_steps),
            hyp["lr_start_factor"],
            hyp["lr_end_factor"],
        )
        optimizer = keras.optimizers.SGD(
            schedule,
            momentum=hyp["momentum"],
            nesterov=True,
            weight_decay=hyp["weight_decay"],
        )
        loss = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=hyp["label_smoothing"]
        )
        model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])

        def augment(images: tf.Tensor, epoch: tf.Variable) -> tf.Tensor:
            if hyp["flip"] == "alternating":  # the data arrive with a random half pre-mirrored
                images = tf.cond(
                    epoch % 2 == 1, lambda: tf.reverse(images, axis=[2]), lambda: images
                )
            return translate(images, hyp["translate_px"]) if hyp["translate_px"] else images

        lookahead = Lookahead(
            hyp["lookahead_start_epoch"],
            total_steps,
            hyp["lookahead_decay"],
            hyp["lookahead_decay_power"],
        )
        return model, augment, True, [lookahead]

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

    def augment_seed(images: tf.Tensor, epoch: tf.Variable) -> tf.Tensor:
        # The blog's two phases: plain data first, augmentation from epoch `epochs` on. Under a
        # mixed policy the augmenter computes (and answers) in bfloat16 or float16; both
        # branches must give the dtype the data came in.
        return tf.cond(
            epoch >= hyp["epochs"],
            lambda: tf.cast(augmenter(images, training=True), images.dtype),
            lambda: images,
        )

    return model, augment_seed, False, []


def validation_logits(
    model: keras.Model, x_val: np.ndarray, tta_level: int, batch_size: int = 500
) -> np.ndarray:
    """The logits the export will serve (before temperature), computed by the same function."""
    return np.concatenate(
        [
            view_logits(model, tf.constant(x_val[i : i + batch_size], tf.float32), tta_level)
            for i in range(0, len(x_val), batch_size)
        ]
    )


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
    views = None
    if hyp.get("adaptive_views") and best > 0:
        one = logits[0] if 0 in logits else validation_logits(model, x_val, 0)
        views, report["views"] = adaptive.choose(
            one, logits[best], y_val, temperature, TTA_VIEWS[best]
        )
    return best, temperature, views, report


def run(config: RunConfig) -> Path | None:
    """Train, export to models/<name>/<version>/, measure through the export, write the report.

    In a TF_CONFIG cluster every worker trains; only the chief exports and returns the version
    folder, the others return None."""
    # --- hardware and precision ---------------------------------------------------------------
    precision = hardware.choose_precision(config.precision)
    machine = hardware.describe()
    print(
        f"precision: {precision.name} ({precision.reason}) | hardware: {machine} | "
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
        ("tta", config.tta),
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
    if config.arch == "fast" and hyp["flip"] == "alternating":
        x_train = mirror_half(x_train, config.seed)

    # --- model --------------------------------------------------------------------------------
    keras.utils.set_random_seed(config.seed)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision.policy)
    try:
        with strategy.scope():
            model, augment, one_hot, recipe_callbacks = build(
                config.arch, hyp, x_train, num_classes, steps_per_epoch * total_epochs
            )
        print(
            f"data: {dataset.source} (train {len(x_train)}, val {len(split.x_val)}, "
            f"test {len(dataset.x_test)}) | arch: {config.arch} | "
            f"params: {model.count_params():,}",
            flush=True,
        )
        # Other workers than the chief keep their checkpoints in a folder of their own (the
        # folders may be on one shared disk) and delete it at the end.
        work_dir = config.checkpoints_dir / config.name
        if worker and not worker.is_chief:
            work_dir = config.checkpoints_dir / f"{config.name}.worker-{worker.rank}"
        fit_seconds = fit(
            model,
            config,
            hyp,
            total_epochs,
            x_train,
            y_train,
            split,
            augment,
            one_hot,
            recipe_callbacks,
            strategy=strategy,
            worker=worker,
            work_dir=work_dir,
        )
        if worker and not worker.is_chief:
            wait_for_every_worker(strategy, worker)  # while the chief exports
            shutil.rmtree(work_dir, ignore_errors=True)
            print(f"{worker.describe()}: done, the chief exported the model", flush=True)
            return None

        # --- choose what to serve, export, measure through the export ---------------------------
        tta_level, temperature, views, serving_check = choose_serving(
            model, split.x_val, split.y_val, hyp
        )
        model_root = config.models_dir / config.name
        version = config.output_version or next_version(model_root)
        version_dir = model_root / str(version)
        if version_dir.exists() and any(version_dir.iterdir()):
            raise FileExistsError(f"{version_dir} exists and is not empty")
        # Written under a temporary name and renamed when complete: a server watching the
        # folder never sees half a version.
        partial_dir = model_root / f".{version}.partial"
        shutil.rmtree(partial_dir, ignore_errors=True)
        metadata: dict[str, Any] = {
            "name": config.name,
            "version": version,
            "architecture": {
                "name": config.arch,
                "description": describe_architecture(config.arch, hyp),
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
        export_model(
            model,
            partial_dir,
            labels=dataset.labels,
            metadata=metadata,
            tta_level=tta_level,
            temperature=temperature,
            views=views,
        )
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

    # Measured through the exported signature, exactly as the app will call it.
    test_probabilities = predict_probabilities(partial_dir, dataset.x_test)
    test = score(test_probabilities, dataset.y_test, dataset.labels)
    val_accuracy = None
    if len(split.x_val):
        val_accuracy = score(
            predict_probabilities(partial_dir, split.x_val), split.y_val, dataset.labels
        ).accuracy
    # The uncalibrated twin of what is served, for the before/after figures.
    uncalibrated = calibration.uncalibrated(test_probabilities, temperature)
    passes = TTA_VIEWS[tta_level]
    if views is not None:
        one_view = predict_probabilities(partial_dir, dataset.x_test, views_below=0.0)
        uncalibrated = adaptive.uncalibrated(test_probabilities, one_view, views, temperature)
        passes = adaptive.passes(one_view.max(axis=1), views.all_views_below, passes)
    write_golden(partial_dir, dataset.x_test[:GOLDEN_SIZE])
    # The INT8 model beside the SavedModel, and each precision measured as the app serves it.
    int8 = quantize_and_measure(
        partial_dir, x_train, dataset.x_test, dataset.y_test, seed=config.seed
    )
    phases = (
        [
            {
                "epochs": total_epochs,
                "augmentation": f"{hyp['flip']} flip + {hyp['translate_px']} px translate",
            }
        ]
        if config.arch == "fast"
        else [
            {"epochs": plain_epochs, "augmentation": "none"},
            {"epochs": total_epochs - plain_epochs, "augmentation": "shift 0.1 + flip"},
        ]
    )
    exported = json.loads((partial_dir / "metadata.json").read_text())
    exported["serving"]["forward_passes_per_image"] = passes  # on the test images
    full = {
        **exported,
        "metrics": {
            "test_accuracy": test.accuracy,
            "val_accuracy": val_accuracy,
            "per_class_accuracy": test.per_class_accuracy,
            "test_calibration": {
                "ece_bins": calibration.ECE_BINS,
                "before": calibration.summary(uncalibrated, dataset.y_test),
                "after": calibration.summary(test_probabilities, dataset.y_test),
            },
            "measured_through": "serving_default signature of this SavedModel",
        },
        "serving_choice": serving_check,
        **int8,
        "training": {
            "epochs": total_epochs,
            "phases": phases,
            "batch_size": batch_size,
            "steps_per_epoch": steps_per_epoch,
            "seed": config.seed,
            "wall_clock_seconds": round(fit_seconds, 1),
            "hardware": machine,
            "precision": precision.name,
            "precision_reason": precision.reason,
            "allocator": hardware.allocator(),
            "strategy": strategy_name,
            "cluster": worker and {"workers": worker.size, "chief": worker.task_type + ":0"},
            "hyperparameters": {k: list(v) if isinstance(v, tuple) else v for k, v in hyp.items()},
        },
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    write_metadata(partial_dir, full)

    # --- report ---------------------------------------------------------------------------------
    report_dir = partial_dir / "report"
    report_dir.mkdir(exist_ok=True)
    shutil.copy(work_dir / HISTORY_FILE, report_dir / HISTORY_FILE)
    write_model_summary(model, report_dir / "model_summary.txt")
    write_test_figures(report_dir, dataset.x_test, dataset.y_test, test.predictions, dataset.labels)
    plot_reliability(
        {"before": uncalibrated, f"after (T = {temperature:.2f})": test_probabilities},
        dataset.y_test,
        report_dir / "calibration.png",
    )
    if version_dir.exists():
        version_dir.rmdir()  # empty (checked above)
    partial_dir.rename(version_dir)
    shutil.rmtree(work_dir / "backup", ignore_errors=True)  # finished: nothing left to resume
    print(
        f"test accuracy {test.accuracy:.4f} | val accuracy {val_accuracy} | "
        f"ECE {full['metrics']['test_calibration']['after']['ece']:.4f} | "
        f"fit {fit_seconds:.0f} s | TTA level {tta_level} | T {temperature:.3f} | "
        f"exported {version_dir}",
        flush=True,
    )
    if worker:
        wait_for_every_worker(strategy, worker)
    return version_dir


def fit(
    model: keras.Model,
    config: RunConfig,
    hyp: dict[str, Any],
    total_epochs: int,
    x_train: np.ndarray,
    y_train: np.ndarray,
    split,
    augment,
    one_hot: bool,
    recipe_callbacks: list[keras.callbacks.Callback],
    *,
    strategy: tf.distribute.Strategy,
    worker: hardware.Worker | None,
    work_dir: Path,
) -> float:
    """model.fit with per-epoch checkpoints (`--resume`), a CSV history and a fit clock in
    `work_dir`; returns the fit's wall-clock seconds, earlier sessions of a resumed run included."""
    num_classes = int(model.output_shape[-1])
    epoch = tf.Variable(0, trainable=False, dtype=tf.int64, name="epoch")
    train_ds = make_train_dataset(
        x_train,
        y_train,
        batch_size=hyp["batch_size"],
        num_classes=num_classes,
        one_hot=one_hot,
        augment=augment,
        epoch=epoch,
        seed=config.seed,
    )
    val_ds = (
        make_eval_dataset(
            split.x_val, split.y_val, batch_size=1000, num_classes=num_classes, one_hot=one_hot
        )
        if len(split.x_val)
        else None
    )
    if work_dir.exists() and not config.resume:
        shutil.rmtree(work_dir)  # a fresh run must not silently continue an old one
    work_dir.mkdir(parents=True, exist_ok=True)
    clock = FitClock(work_dir / "fit_clock.json", config.resume)
    callbacks = [
        EpochCounter(epoch),
        keras.callbacks.BackupAndRestore(str(work_dir / "backup"), delete_checkpoint=False),
        *recipe_callbacks,
        keras.callbacks.CSVLogger(str(work_dir / HISTORY_FILE), append=config.resume),
        clock,
    ]
    if worker:
        allow_multi_worker_fit(model)
        same_start_on_every_worker(strategy, work_dir / "backup")
    try:
        with strategy.scope():
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
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as error:
        if worker is None:
            raise
        raise hardware.ClusterError(
            f"{worker.describe()}: the cluster lost a worker, so this one stops too. Each "
            f"worker keeps its last epoch's checkpoint: start all {worker.size} again with "
            f"--resume. TensorFlow: {hardware.tf_reason(error)}"
        ) from error
    return clock.seconds


def allow_multi_worker_fit(model: keras.Model) -> None:
    """Two Keras 3 bugs stop `fit` under MultiWorkerMirroredStrategy (keras-team/keras#20585,
    still in Keras 3.15): fit averages the first input batch across workers with
    `strategy.reduce`, which takes no (images, labels) tuple, and it averages each step's scalar
    logs over `axis=0`, which a scalar lacks. Clearing the model's own strategy skips the first
    (fit then runs inside `strategy.scope()` and builds the rest while tracing); logs handed
    back as 1-element vectors turn the second into the mean over workers. The two-worker test
    (tests/training/test_multiworker.py) fails if a Keras upgrade changes either."""
    model._distribute_strategy = None
    for name in ("train_step", "test_step"):
        step = getattr(model, name)

        def vector_logs(data, step=step) -> dict[str, tf.Tensor]:
            return {key: tf.reshape(value, [1]) for key, value in step(data).items()}

        setattr(model, name, vector_logs)


def same_start_on_every_worker(strategy: tf.distribute.Strategy, backup_dir: Path) -> None:
    """Each worker restores its own checkpoint. Workers that would resume from different epochs
    (one lost its folder) would diverge, or hang once their collectives no longer pair up, so
    they compare the epoch in BackupAndRestore's metadata before fit and stop instead."""
    saved = backup_dir / "training_metadata.json"
    epoch = json.loads(saved.read_text())["epoch"] if saved.is_file() else 0
    mine = strategy.experimental_distribute_values_from_function(lambda _: tf.constant([epoch]))
    epochs = strategy.gather(mine, axis=0).numpy().tolist()
    if len(set(epochs)) > 1:
        raise hardware.ClusterError(
            f"the workers would resume from epochs {epochs} (in worker order): each needs its "
            "checkpoint folder from the same interrupted run. Start them all without --resume "
            "to train afresh."
        )


def wait_for_every_worker(strategy: tf.distribute.Strategy, worker: hardware.Worker) -> None:
    """A barrier, one all-reduce, at the end of the run: no worker exits while the chief still
    exports (TensorFlow would report that exit as a crash), and if the chief fails there, the
    others fail too."""
    try:
        one = strategy.experimental_distribute_values_from_function(lambda _: tf.constant(1.0))
        strategy.reduce("SUM", one, axis=None)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as error:
        raise hardware.ClusterError(
            f"{worker.describe()}: not every worker reached the end of the run (the chief "
            f"exports before it). TensorFlow: {hardware.tf_reason(error)}"
        ) from error
