import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from training.data import CIFAR10_LABELS
from training.export import emits_probabilities, export_model, read_metadata, write_golden

METADATA = {"name": "cifar10", "version": 3, "architecture": {"name": "t"}, "dataset": {}}


def tiny_model(softmax: bool) -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
            keras.layers.Flatten(),  # not flip-invariant, so TTA is visible
            keras.layers.Dense(10, activation="softmax" if softmax else None),
        ]
    )


def images(count: int = 7) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def serve(version_dir: Path, x: np.ndarray) -> np.ndarray:
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    return signature(images=tf.constant(x))["probabilities"].numpy()


@pytest.mark.parametrize("softmax", [True, False])
def test_round_trip_takes_uint8_and_returns_probabilities(softmax: bool, tmp_path: Path) -> None:
    model = tiny_model(softmax)
    export_model(model, tmp_path / "1", labels=CIFAR10_LABELS, metadata=METADATA)

    signature = tf.saved_model.load(str(tmp_path / "1")).signatures["serving_default"]
    _, inputs = signature.structured_input_signature
    assert list(inputs) == ["images"]
    assert inputs["images"].dtype == tf.uint8 and inputs["images"].shape.as_list() == [
        None,
        32,
        32,
        3,
    ]
    outputs = signature.structured_outputs
    assert list(outputs) == ["probabilities"] and outputs["probabilities"].dtype == tf.float32

    x = images()
    probabilities = serve(tmp_path / "1", x)
    assert probabilities.shape == (7, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    expected = model.predict(x.astype("float32"), verbose=0)
    if not softmax:
        expected = tf.nn.softmax(expected).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_softmax_is_detected_from_the_last_layer() -> None:
    assert emits_probabilities(tiny_model(softmax=True))
    assert not emits_probabilities(tiny_model(softmax=False))


def logits(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return model.predict(np.ascontiguousarray(x, dtype="float32"), verbose=0)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_tta_level_1_averages_image_and_mirror(tmp_path: Path) -> None:
    model = tiny_model(softmax=False)
    export_model(model, tmp_path / "1", labels=CIFAR10_LABELS, metadata=METADATA, tta_level=1)

    x = images()
    probabilities = serve(tmp_path / "1", x)

    expected = softmax((logits(model, x) + logits(model, x[:, :, ::-1])) / 2)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert not np.allclose(probabilities, softmax(logits(model, x)), atol=1e-4)


def test_tta_level_2_weights_six_views_like_airbench(tmp_path: Path) -> None:
    model = tiny_model(softmax=False)
    export_model(model, tmp_path / "1", labels=CIFAR10_LABELS, metadata=METADATA, tta_level=2)

    x = images()
    padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="reflect")
    up_left, down_right = padded[:, :32, :32], padded[:, 2:, 2:]

    def mirror_mean(view: np.ndarray) -> np.ndarray:
        return (logits(model, view) + logits(model, view[:, :, ::-1])) / 2

    expected = 0.5 * mirror_mean(x) + 0.25 * (mirror_mean(up_left) + mirror_mean(down_right))
    np.testing.assert_allclose(serve(tmp_path / "1", x), softmax(expected), atol=1e-5)
    assert read_metadata(tmp_path / "1")["serving"]["forward_passes_per_image"] == 6


def test_temperature_divides_the_logits_inside_the_graph(tmp_path: Path) -> None:
    model = tiny_model(softmax=False)
    export_model(model, tmp_path / "1", labels=CIFAR10_LABELS, metadata=METADATA, temperature=0.5)

    x = images()
    np.testing.assert_allclose(serve(tmp_path / "1", x), softmax(logits(model, x) / 0.5), atol=1e-5)
    assert read_metadata(tmp_path / "1")["serving"]["temperature"] == 0.5


def test_golden_set_holds_the_signatures_answers(tmp_path: Path) -> None:
    export_model(tiny_model(True), tmp_path / "1", labels=CIFAR10_LABELS, metadata=METADATA)
    x = images(5)

    path = write_golden(tmp_path / "1", x)

    with np.load(path) as golden:
        np.testing.assert_array_equal(golden["images"], x)
        assert golden["probabilities"].dtype == np.float32
        np.testing.assert_array_equal(golden["probabilities"], serve(tmp_path / "1", x))


def test_metadata_merges_labels_input_and_versions(tmp_path: Path) -> None:
    export_model(tiny_model(True), tmp_path / "1", labels=CIFAR10_LABELS, metadata=METADATA)

    metadata = json.loads((tmp_path / "1" / "metadata.json").read_text())
    signature = tf.saved_model.load(str(tmp_path / "1")).signatures["serving_default"]
    _, inputs = signature.structured_input_signature
    height, width, channels = inputs["images"].shape.as_list()[1:]

    assert metadata["name"] == "cifar10" and metadata["version"] == 3
    assert metadata["labels"] == list(CIFAR10_LABELS)
    assert len(metadata["labels"]) == signature.structured_outputs["probabilities"].shape[-1]
    assert metadata["input"] == {
        "height": height,
        "width": width,
        "channels": channels,
        "dtype": "uint8",
    }
    assert set(metadata["versions"]) == {"python", "tensorflow", "keras"}


def test_label_count_must_match_the_output(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="10 outputs but 3 labels"):
        export_model(tiny_model(True), tmp_path / "1", labels=["a", "b", "c"], metadata={})


def test_a_model_trained_in_bfloat16_is_exported_in_float32(tmp_path: Path) -> None:
    """Trained under mixed_bfloat16 (what --precision auto picks on a CPU with bf16 units), the
    export computes in float32: OpenVINO reads it (a bf16 constant it cannot), and the served
    answers are the float32 network's, not bfloat16-rounded ones."""
    import openvino as ov

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = tiny_model(softmax=False)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    float32 = tiny_model(softmax=False)
    float32.set_weights(model.get_weights())

    export_model(model, tmp_path / "1", labels=CIFAR10_LABELS, metadata=METADATA)

    x = images()
    expected = tf.nn.softmax(float32.predict(x.astype("float32"), verbose=0)).numpy()
    np.testing.assert_allclose(serve(tmp_path / "1", x), expected, atol=1e-6)
    assert ov.Core().read_model(str(tmp_path / "1")).outputs[0].get_element_type() == ov.Type.f32
