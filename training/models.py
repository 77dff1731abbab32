"""Model builders. Each takes float pixels in 0..255 (NHWC) so scaling lives inside the model.

- `make_seed_model`: the blog's VGG-style network, unchanged (softmax output).
- `make_fast_model`: an airbench94-shaped network (logits output), sized for a 2-core CPU.
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


def make_fast_model(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    widths: Sequence[int] = (32, 128, 128),
    batchnorm_momentum: float = 0.9,
    logit_scale: float = 1 / 9,
    activation: str = "relu",
    train_images: np.ndarray | None = None,
) -> keras.Model:
    """An airbench94-shaped net emitting logits: whitening conv, three conv blocks, max-pool head.

    `train_images` (uint8 or float 0..255) sets the normalisation statistics and the whitening
    kernel from the data; without it CIFAR-10 statistics and an unfitted kernel are used (tests).
    """
    if train_images is not None:
        pixels = np.asarray(train_images, dtype=np.float32) / 255.0
        mean = pixels.mean(axis=(0, 1, 2))
        std = pixels.std(axis=(0, 1, 2))
    else:
        pixels, mean, std = None, np.array(CIFAR10_MEAN), np.array(CIFAR10_STD)

    def bn(name: str) -> layers.Layer:
        # No learned scale: the following conv is scale-invariant anyway (as in airbench).
        return layers.BatchNormalization(momentum=batchnorm_momentum, scale=False, name=name)

    inputs = keras.Input(tuple(input_shape))
    x = layers.Normalization(mean=mean * 255.0, variance=(std * 255.0) ** 2, name="normalize")(
        inputs
    )
    whiten = PatchWhitening(name="whiten")
    x = layers.Activation(activation, name="whiten_act")(whiten(x))
    for block, width in enumerate(widths, start=1):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{block}_conv1")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        x = layers.Activation(activation, name=f"block{block}_act1")(bn(f"block{block}_bn1")(x))
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{block}_conv2")(x)
        x = layers.Activation(activation, name=f"block{block}_act2")(bn(f"block{block}_bn2")(x))
    x = layers.GlobalMaxPooling2D(name="pool")(x)
    x = layers.Dense(num_classes, use_bias=False, name="head")(x)
    # airbench's fixed 1/9 output scale: keeps early logits small, a temperature on the head.
    outputs = layers.Rescaling(logit_scale, name="logits")(x)
    model = keras.Model(inputs, outputs, name="fast")

    if pixels is not None:
        sample = pixels[: min(len(pixels), 5000)]
        whiten.adapt((sample - mean) / std)
    return model
