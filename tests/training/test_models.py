import keras
import numpy as np
import pytest
import tensorflow as tf

from training.models import PatchWhitening, make_fast_model, make_seed_model
from training.train import WarmupLinearDecay, flip_and_translate, make_train_dataset


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
    assert model.count_params() == 2_397_226


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


def test_schedule_warms_up_then_decays_to_zero() -> None:
    schedule = WarmupLinearDecay(peak=2.0, total_steps=100, warmup_steps=20, start_factor=0.2)
    values = [float(schedule(step)) for step in (0, 10, 20, 60, 100, 150)]

    np.testing.assert_allclose(values, [0.4, 1.2, 2.0, 1.0, 0.0, 0.0], atol=1e-6)


def test_flip_and_translate_moves_whole_images_by_at_most_two_pixels() -> None:
    images = tf.constant(synthetic(16)[0])
    out = flip_and_translate(images, translate_px=2, flip=True).numpy()

    assert out.shape == images.shape
    for original, augmented in zip(images.numpy(), out, strict=True):
        centre = augmented[2:-2, 2:-2]
        candidates = [
            image[2 + dy : 30 + dy, 2 + dx : 30 + dx]
            for image in (original, original[:, ::-1])
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        ]
        assert any(np.array_equal(centre, c) for c in candidates)


def test_augmentation_switch_is_read_each_epoch() -> None:
    """The seed's second phase: the same dataset augments only once the flag is switched on."""
    x, y = synthetic(8)
    flag = tf.Variable(False, trainable=False)
    dataset = make_train_dataset(
        x.astype(np.uint8),
        y,
        batch_size=4,
        num_classes=10,
        one_hot=False,
        augment=lambda images: images * 0.0 - 1.0,
        augment_on=flag,
        seed=0,
    )

    plain = np.concatenate([images.numpy() for images, _ in dataset])
    flag.assign(True)
    augmented = np.concatenate([images.numpy() for images, _ in dataset])

    assert plain.min() >= 0 and np.all(augmented == -1.0)
