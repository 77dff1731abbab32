"""The recipes: what trains, on which hyperparameters, schedule and augmentation.

Read like airbench94's single script: the hyperparameters first, one dict per architecture with
the unit and meaning of each value; then the pieces they drive, in the order a step meets them
(augmentation, learning-rate schedule, lookahead); then `build`, which turns a dict into a
compiled model. The run (training/train.py) calls `hyperparameters` and `build`; the CLI only
overrides epochs, batch size and the like, and every value used is recorded in metadata.json.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from training.config import RunConfig
from training.models import make_fast_model, make_seed_model

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


def hyperparameters(config: RunConfig) -> dict[str, Any]:
    """The recipe's hyperparameters with the run's overrides (None keeps the recipe's)."""
    hyp = dict(FAST_HYP if config.arch == "fast" else SEED_HYP)
    for key in ("epochs", "aug_epochs", "batch_size", "tta"):
        value = getattr(config, key)
        if value is not None:
            if key not in hyp:
                raise ValueError(
                    f"--{key.replace('_', '-')} does not apply to --arch {config.arch}"
                )
            hyp[key] = value
    return hyp


def total_epochs(arch: str, hyp: dict[str, Any]) -> int:
    """fast: all epochs augmented; seed: the plain epochs, then the augmented ones."""
    return hyp["epochs"] + hyp["aug_epochs"] if arch == "seed" else hyp["epochs"]


def phases(arch: str, hyp: dict[str, Any]) -> list[dict[str, Any]]:
    """metadata.json's `training.phases`: epochs and augmentation of each phase."""
    if arch == "fast":
        augmentation = f"{hyp['flip']} flip + {hyp['translate_px']} px translate"
        return [{"epochs": total_epochs(arch, hyp), "augmentation": augmentation}]
    return [
        {"epochs": hyp["epochs"], "augmentation": "none"},
        {"epochs": hyp["aug_epochs"], "augmentation": "shift 0.1 + flip"},
    ]


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


# --- augmentation -------------------------------------------------------------------------------


def mirror_half(x: np.ndarray, seed: int) -> np.ndarray:
    """A seeded random half of the images mirrored: the fixed start of alternating flip."""
    flip = np.random.default_rng(seed).random(len(x)) < 0.5
    return np.where(flip[:, None, None, None], x[:, :, ::-1], x)


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


# --- learning-rate schedule ---------------------------------------------------------------------


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


# --- lookahead ----------------------------------------------------------------------------------


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


# --- build --------------------------------------------------------------------------------------


class Built(NamedTuple):
    """What `build` returns; unpacks like the tuple it is."""

    model: keras.Model  # compiled for training
    augment: Any  # augment(images, epoch) on whole batches of float pixels 0..255
    one_hot: bool  # whether the loss takes one-hot labels
    callbacks: list[keras.callbacks.Callback]  # what the recipe needs during fit


def build(
    arch: str, hyp: dict[str, Any], x_train: np.ndarray, num_classes: int, total_steps: int
) -> Built:
    """The model compiled for training, its batch augmentation `augment(images, epoch)`, whether
    labels are one-hot, and the callbacks the recipe needs."""
    if arch == "fast":
        return build_fast(hyp, x_train, num_classes, total_steps)
    return build_seed(hyp, x_train.shape[1:], num_classes)


def fast_network(hyp: dict[str, Any], x_train: np.ndarray, num_classes: int) -> keras.Model:
    """The fast recipe's network for these hyperparameters, normalised by `x_train` (also how
    training.views rebuilds an exported version from its recorded hyperparameters)."""
    return make_fast_model(
        x_train.shape[1:],
        num_classes,
        widths=hyp["widths"],
        batchnorm_momentum=hyp["batchnorm_momentum"],
        bias_lr_multiplier=hyp["bias_lr_multiplier"],
        logit_scale=hyp["logit_scale"],
        activation=hyp["activation"],
        train_images=x_train,
    )


def build_fast(
    hyp: dict[str, Any], x_train: np.ndarray, num_classes: int, total_steps: int
) -> Built:
    model = fast_network(hyp, x_train, num_classes)
    schedule = TriangularSchedule(
        hyp["lr"] * hyp["batch_size"] / 1024,
        total_steps,
        round(hyp["lr_peak_fraction"] * total_steps),
        hyp["lr_start_factor"],
        hyp["lr_end_factor"],
    )
    optimizer = keras.optimizers.SGD(
        schedule, momentum=hyp["momentum"], nesterov=True, weight_decay=hyp["weight_decay"]
    )
    loss = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=hyp["label_smoothing"]
    )
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])

    def augment(images: tf.Tensor, epoch: tf.Variable) -> tf.Tensor:
        if hyp["flip"] == "alternating":  # the data arrive with a random half pre-mirrored
            images = tf.cond(epoch % 2 == 1, lambda: tf.reverse(images, axis=[2]), lambda: images)
        return translate(images, hyp["translate_px"]) if hyp["translate_px"] else images

    lookahead = Lookahead(
        hyp["lookahead_start_epoch"],
        total_steps,
        hyp["lookahead_decay"],
        hyp["lookahead_decay_power"],
    )
    return Built(model, augment, True, [lookahead])


def build_seed(hyp: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> Built:
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

    def augment(images: tf.Tensor, epoch: tf.Variable) -> tf.Tensor:
        # The blog's two phases: plain data first, augmentation from epoch `epochs` on. Under a
        # mixed policy the augmenter computes (and answers) in bfloat16 or float16; both
        # branches must give the dtype the data came in.
        return tf.cond(
            epoch >= hyp["epochs"],
            lambda: tf.cast(augmenter(images, training=True), images.dtype),
            lambda: images,
        )

    return Built(model, augment, False, [])
