import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from training.fit import make_train_dataset
from training.models import (
    PatchWhitening,
    ScaledShift,
    dirac_init,
    make_fast_model,
    make_seed_model,
)
from training.recipe import Lookahead, TriangularSchedule, mirror_half, translate


def synthetic(count: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, 32, 32, 3)).astype("float32"), np.arange(count) % 10


@pytest.mark.parametrize("arch", ["fast", "seed"])
def test_one_training_step_changes_weights_and_gives_finite_loss(arch: str) -> None:
    keras.utils.set_random_seed(0)
    x, y = synthetic()
    if arch == "fast":
        model = make_fast_model((32, 32, 3), 10, train_images=x)
        model.compile(
            keras.optimizers.SGD(0.1, momentum=0.85, nesterov=True),
            keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2),
        )
        targets = keras.utils.to_categorical(y, 10)
    else:
        model = make_seed_model((32, 32, 3), 10)
        model.compile("adam", "sparse_categorical_crossentropy")
        targets = y
    before = [w.copy() for w in model.get_weights()]

    loss = model.train_on_batch(x, targets)

    assert np.isfinite(loss)
    assert model.output_shape == (None, 10)
    changed = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True)]
    assert sum(changed) > len(changed) // 2


def test_seed_model_is_the_blogs_network() -> None:
    model = make_seed_model((32, 32, 3), 10)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]

    assert [conv.filters for conv in convs] == [32, 32, 64, 64, 128, 128]
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 6
    assert [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)] == [
        1024,
        10,
    ]
    assert model.layers[-1].activation.__name__ == "softmax"
    # Counted from the blog's layer list: conv 3x3 (kernel + bias), BatchNorm (4 per channel),
    # Dense 4*4*128 -> 1024 -> 10.
    channels = [3, 32, 32, 64, 64, 128, 128]
    convs_and_norms = sum(9 * a * b + b + 4 * b for a, b in itertools.pairwise(channels))
    dense = (4 * 4 * 128 * 1024 + 1024) + (1024 * 10 + 10)
    assert model.count_params() == convs_and_norms + dense


def test_whitening_decorrelates_patches() -> None:
    rng = np.random.default_rng(0)
    # Strongly correlated channels: the whitened patches must not be.
    base = rng.normal(size=(200, 16, 16, 1))
    noise = rng.normal(size=(2, *base.shape))
    images = np.concatenate([base, base * 0.9 + 0.1 * noise[0], -base + 0.3 * noise[1]], -1)
    layer = PatchWhitening(eps=1e-6)
    layer.build(images.shape)
    layer.adapt(images)

    out = keras.ops.convert_to_numpy(layer(images.astype("float32")))[..., :12].reshape(-1, 12)
    covariance = np.cov(out.T)

    np.testing.assert_allclose(np.diag(covariance), 1.0, atol=0.1)
    assert np.abs(covariance - np.diag(np.diag(covariance))).max() < 0.1


def test_whitening_layer_round_trips_its_config() -> None:
    layer = PatchWhitening(kernel_size=3, eps=1e-3, name="w")
    clone = PatchWhitening.from_config(layer.get_config())

    assert (clone.kernel_size, clone.eps, clone.name) == (3, 1e-3, "w")


def test_schedule_is_triangular() -> None:
    schedule = TriangularSchedule(peak=2.0, total_steps=100, peak_step=20, start=0.2, end=0.1)
    values = [float(schedule(step)) for step in (0, 10, 20, 60, 100, 150)]

    np.testing.assert_allclose(values, [0.4, 1.2, 2.0, 1.1, 0.2, 0.2], atol=1e-6)


def test_translate_moves_whole_images_by_at_most_two_pixels() -> None:
    images = tf.constant(synthetic(16)[0])
    out = translate(images, 2).numpy()

    assert out.shape == images.shape
    shifts = set()
    for original, augmented in zip(images.numpy(), out, strict=True):
        centre = augmented[2:-2, 2:-2]
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(centre, original[2 + dy : 30 + dy, 2 + dx : 30 + dx])
        ]
        assert matches
        shifts.update(matches)
    assert len(shifts) > 1  # random per image, not one shift for the batch


def test_alternating_flip_mirrors_half_once_then_the_whole_batch_on_odd_epochs() -> None:
    x, y = synthetic(64)
    x = x.astype(np.uint8)
    start = mirror_half(x, seed=0)
    mirrored = [np.array_equal(a, b[:, ::-1]) for a, b in zip(start, x, strict=True)]
    assert 16 < sum(mirrored) < 48 and mirror_half(x, seed=0).tolist() == start.tolist()

    epoch = tf.Variable(0, dtype=tf.int64)
    dataset = make_train_dataset(
        start,
        y,
        batch_size=64,
        num_classes=10,
        one_hot=False,
        augment=lambda images, e: tf.cond(
            e % 2 == 1, lambda: tf.reverse(images, axis=[2]), lambda: images
        ),
        epoch=epoch,
        seed=0,
    )

    def images_seen(mirror: bool = False) -> list[bytes]:
        """The batch as a sorted list of images: the shuffle's order does not matter."""
        images = next(iter(dataset))[0].numpy().astype(np.uint8)
        return sorted(image[:, ::-1].tobytes() if mirror else image.tobytes() for image in images)

    even = images_seen()
    epoch.assign(1)
    assert images_seen(mirror=True) == even  # odd epochs: every image mirrored
    assert images_seen() != even


def test_augmentation_reads_the_epoch_each_time() -> None:
    """The seed's second phase: the same dataset augments only once the epoch has come."""
    x, y = synthetic(8)
    epoch = tf.Variable(0, dtype=tf.int64)
    dataset = make_train_dataset(
        x.astype(np.uint8),
        y,
        batch_size=4,
        num_classes=10,
        one_hot=False,
        augment=lambda images, e: tf.cond(e >= 1, lambda: images * 0.0 - 1.0, lambda: images),
        epoch=epoch,
        seed=0,
    )

    plain = np.concatenate([images.numpy() for images, _ in dataset])
    epoch.assign(1)
    augmented = np.concatenate([images.numpy() for images, _ in dataset])

    assert plain.min() >= 0 and np.all(augmented == -1.0)


def test_scaled_shift_trains_lr_multiplier_times_faster() -> None:
    layer = ScaledShift(lr_multiplier=64.0)
    plain = tf.Variable(tf.zeros(4))
    layer.build((None, 4))
    x = tf.ones((2, 4))

    for variable, forward in ((layer.shift, layer), (plain, lambda inputs: inputs + plain)):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(forward(x))
        keras.optimizers.SGD(0.01).apply_gradients([(tape.gradient(loss, variable), variable)])

    moved = keras.ops.convert_to_numpy(layer(tf.zeros((1, 4))))[0]
    np.testing.assert_allclose(moved, 64.0 * plain.numpy(), rtol=1e-5)
    assert np.all(plain.numpy() < 0)


def test_dirac_init_passes_the_first_channels_through() -> None:
    conv = keras.layers.Conv2D(6, 3, padding="same", use_bias=False)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype("float32")
    conv.build(x.shape)
    dirac_init(conv)

    out = keras.ops.convert_to_numpy(conv(x))

    np.testing.assert_allclose(out[..., :4], x, atol=1e-6)
    assert np.abs(out[..., 4:]).sum() > 0  # the remaining filters keep their random init


def test_lookahead_pulls_weights_into_their_average() -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    lookahead = Lookahead(start_epoch=1, total_steps=10, decay=0.9, power=1.0, every=5)
    lookahead.set_model(model)
    kernel = model.layers[0].kernel

    def step_to(step: int, value: float) -> None:
        model.optimizer.iterations.assign(step)
        kernel.assign(np.full((3, 2), value, "float32"))
        lookahead.on_train_batch_end(0)

    lookahead.on_epoch_begin(0)
    step_to(5, 1.0)
    assert lookahead.average is None  # before start_epoch: nothing happens
    lookahead.on_epoch_begin(1)
    step_to(5, 1.0)  # first update: the average starts from the weights
    step_to(7, 3.0)  # not a multiple of `every`: untouched
    np.testing.assert_allclose(kernel.numpy(), 3.0)
    step_to(10, 3.0)  # rho = 0.9**5 * (10 / 10) ** 1
    rho = 0.9**5
    np.testing.assert_allclose(kernel.numpy(), rho * 1.0 + (1 - rho) * 3.0, rtol=1e-6)
