"""Model builders. Each takes float pixels in 0..255 (NHWC) so scaling lives inside the model.

- `make_seed_model`: the blog's VGG-style network, unchanged (softmax output).
- `make_fast_model`: airbench94's network (logits output): whitening, three GELU conv blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers, ops

# Per-channel mean and std of CIFAR-10 train pixels / 255 (shared/data/cifar10/README.md); used
# when the builder is not given training images to measure them from.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def make_seed_model(input_shape: Sequence[int], num_classes: int) -> keras.Model:
    """The blog's network: three [Conv-BN]x2 + MaxPool blocks, Dropout-Dense-Dropout-softmax."""
    model = keras.Sequential(name="seed")
    model.add(keras.Input(tuple(input_shape)))
    model.add(layers.Rescaling(1 / 255, name="scale"))
    for filters in (32, 64, 128):
        for _ in range(2):
            model.add(layers.Conv2D(filters, 3, activation="relu", padding="same"))
            model.add(layers.BatchNormalization())
        model.add(layers.MaxPooling2D(2))
    model.add(layers.Flatten())
    model.add(layers.Dropout(0.2))
    model.add(layers.Dense(1024, activation="relu"))
    model.add(layers.Dropout(0.2))
    model.add(layers.Dense(num_classes, activation="softmax"))
    return model


@keras.saving.register_keras_serializable(package="training")
class PatchWhitening(layers.Layer):
    """A frozen 2x2 convolution that whitens image patches (airbench's first layer).

    The kernel holds the eigenvectors of the covariance of k x k patches of the (normalised)
    training images, scaled by 1/sqrt(eigenvalue), as +/- pairs so a following ReLU keeps both
    signs. It decorrelates the input at no training cost. Only the bias trains.
    """

    def __init__(self, kernel_size: int = 2, eps: float = 5e-4, **kwargs) -> None:
        super().__init__(**kwargs)
        self.kernel_size = kernel_size
        self.eps = eps

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = int(input_shape[-1])
        patch_dim = self.kernel_size * self.kernel_size * channels
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.kernel_size, channels, 2 * patch_dim),
            initializer="glorot_uniform",
            trainable=False,
        )
        self.bias = self.add_weight(name="bias", shape=(2 * patch_dim,), initializer="zeros")

    def call(self, inputs):
        return ops.conv(inputs, self.kernel, padding="valid") + self.bias

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        batch, height, width, channels = input_shape
        k = self.kernel_size
        out_h = None if height is None else height - k + 1
        out_w = None if width is None else width - k + 1
        return (batch, out_h, out_w, 2 * k * k * channels)

    def adapt(self, images: np.ndarray, max_patches: int = 500_000, seed: int = 0) -> None:
        """Set the kernel from normalised float images (N, H, W, C)."""
        k = self.kernel_size
        channels = images.shape[-1]
        windows = np.lib.stride_tricks.sliding_window_view(images, (k, k), axis=(1, 2))
        # windows: (N, H-k+1, W-k+1, C, k, k) -> patches ordered (k, k, C) like the kernel.
        patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, k * k * channels)
        if len(patches) > max_patches:
            rng = np.random.default_rng(seed)
            patches = patches[rng.choice(len(patches), max_patches, replace=False)]
        patches = patches.astype(np.float64)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        order = np.argsort(eigenvalues)[::-1]
        scaled = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + self.eps)
        kernel = scaled.reshape(k, k, channels, -1)
        self.kernel.assign(np.concatenate([kernel, -kernel], axis=-1).astype("float32"))

    def get_config(self) -> dict:
        return {**super().get_config(), "kernel_size": self.kernel_size, "eps": self.eps}


@keras.saving.register_keras_serializable(package="training")
class ScaledShift(layers.Layer):
    """A learned per-channel shift that trains `lr_multiplier` times faster than the other weights.

    airbench gives BatchNorm biases 64x the learning rate. Keras optimizers have one learning rate,
    so the shift is stored divided by sqrt(m) and multiplied back in `call`: the stored variable's
    gradient grows by sqrt(m) and each step moves the shift sqrt(m) * sqrt(m) = m times further.
    Decoupled weight decay shrinks it by the same fraction as every other weight.
    """

    def __init__(self, lr_multiplier: float = 64.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.lr_multiplier = lr_multiplier
        self.factor = float(np.sqrt(lr_multiplier))

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.shift = self.add_weight(name="shift", shape=(input_shape[-1],), initializer="zeros")

    def call(self, inputs):
        return inputs + self.factor * self.shift

    def get_config(self) -> dict:
        return {**super().get_config(), "lr_multiplier": self.lr_multiplier}


def dirac_init(conv: layers.Conv2D) -> None:
    """Make the first min(in, out) filters identities (airbench): every block starts as a near
    pass-through, an implicit residual connection; the other filters keep their random init."""
    kernel = conv.kernel.numpy()
    kh, kw, channels_in, channels_out = kernel.shape
    identities = min(channels_in, channels_out)
    kernel[..., :identities] = 0.0
    kernel[kh // 2, kw // 2, np.arange(identities), np.arange(identities)] = 1.0
    conv.kernel.assign(kernel)


def make_fast_model(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    widths: Sequence[int] = (64, 256, 256),
    batchnorm_momentum: float = 0.6,
    bias_lr_multiplier: float = 64.0,
    logit_scale: float = 1 / 9,
    activation: str = "gelu",
    train_images: np.ndarray | None = None,
) -> keras.Model:
    """airbench94's net emitting logits: whitening conv, three conv blocks, max-pool head.

    `train_images` (uint8 or float 0..255) sets the normalisation statistics and the whitening
    kernel from the data; without it CIFAR-10 statistics and an unfitted kernel are used (tests).
    """
    if train_images is not None:
        pixels = np.asarray(train_images, dtype=np.float32) / 255.0
        mean = pixels.mean(axis=(0, 1, 2))
        std = pixels.std(axis=(0, 1, 2))
    else:
        pixels, mean, std = None, np.array(CIFAR10_MEAN), np.array(CIFAR10_STD)

    def norm(x, name: str):
        # Normalise only; the shift trains 64x faster and there is no scale: the following conv
        # is scale-invariant anyway (as in airbench).
        x = layers.BatchNormalization(
            momentum=batchnorm_momentum, epsilon=1e-5, center=False, scale=False, name=name
        )(x)
        return ScaledShift(bias_lr_multiplier, name=f"{name}_shift")(x)

    inputs = keras.Input(tuple(input_shape))
    x = layers.Normalization(mean=mean * 255.0, variance=(std * 255.0) ** 2, name="normalize")(
        inputs
    )
    whiten = PatchWhitening(name="whiten")
    x = layers.Activation(activation, name="whiten_act")(whiten(x))
    convs = []
    for block, width in enumerate(widths, start=1):
        conv1 = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{block}_conv1")
        conv2 = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{block}_conv2")
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(conv1(x))
        x = layers.Activation(activation, name=f"block{block}_act1")(norm(x, f"block{block}_bn1"))
        x = conv2(x)
        x = layers.Activation(activation, name=f"block{block}_act2")(norm(x, f"block{block}_bn2"))
        convs += [conv1, conv2]
    x = layers.GlobalMaxPooling2D(name="pool")(x)
    x = layers.Dense(num_classes, use_bias=False, name="head")(x)
    # airbench's fixed 1/9 output scale keeps early logits small. float32 whatever the policy,
    # so the loss and the exported softmax never see bfloat16 logits.
    outputs = layers.Rescaling(logit_scale, name="logits", dtype="float32")(x)
    model = keras.Model(inputs, outputs, name="fast")

    for conv in convs:
        dirac_init(conv)
    if pixels is not None:
        sample = pixels[: min(len(pixels), 5000)]
        whiten.adapt((sample - mean) / std)
    return model
