"""The shipped model, served: real CIFAR-10 test PNGs (tests/fixtures/cifar10) get their labels."""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from app.contract import INT8_MODEL, is_version_name
from app.golden import TOLERANCE
from tests.conftest import FIXTURES, LABELS, REPO, assert_served_like, precision

SHIPPED = REPO / "models" / "cifar10"
BLOG = REPO / "models" / "cifar10-seed"
PNGS = sorted((FIXTURES / "cifar10").glob("*.png"))
UPLOADS = [("files", (png.name, png.read_bytes(), "image/png")) for png in PNGS]
TRUTH = [png.stem.split("_", 1)[1] for png in PNGS]  # test00013_horse.png -> horse


def served_version(model_dir: Path = SHIPPED) -> Path:
    """The version the app serves: the highest integer folder (others, like `.3.partial`, are
    ignored, as the app ignores them)."""
    versions = [p for p in model_dir.iterdir() if is_version_name(p.name)]
    return max(versions, key=lambda p: int(p.name))


def test_metadata_matches_the_contract() -> None:
    version_dir = served_version()
    metadata = json.loads((version_dir / "metadata.json").read_text())

    assert metadata["labels"] == LABELS
    assert metadata["input"] == {"height": 32, "width": 32, "channels": 3, "dtype": "uint8"}
    for key in ("test_accuracy", "val_accuracy", "per_class_accuracy"):
        assert key in metadata["metrics"]
    assert {"epochs", "batch_size", "seed", "wall_clock_seconds", "hardware", "precision"} <= set(
        metadata["training"]
    )


def test_real_cifar10_images_get_their_true_labels(shipped_client) -> None:
    response = shipped_client.post("/predict", files=UPLOADS)

    assert response.status_code == 200
    predictions = response.json()["predictions"]
    correct = sum(p["label"] == t for p, t in zip(predictions, TRUTH, strict=True))
    assert correct >= len(PNGS) - 1, list(
        zip([p["label"] for p in predictions], TRUTH, strict=True)
    )


def test_served_probabilities_equal_the_signature_on_the_same_pixels(shipped_client) -> None:
    served = shipped_client.post("/predict", files=UPLOADS).json()["predictions"]

    pixels = np.stack([np.asarray(Image.open(png).convert("RGB")) for png in PNGS])
    version_dir = served_version()
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    feed = {"images": tf.constant(pixels)}
    views = json.loads((version_dir / "metadata.json").read_text())["serving"].get("views")
    if views is not None:  # adaptive views: the app feeds the version's own threshold
        feed["all_views_below"] = tf.fill([len(pixels)], float(views["all_views_below"]))
    expected = signature(**feed)["probabilities"].numpy()

    got = np.array([[p["probabilities"][label] for label in LABELS] for p in served])
    assert_served_like(got, expected, shipped_client.get("/health").json()["precision"])


def test_the_served_version_reproduces_its_golden_set() -> None:
    """golden.npz holds the exported signature's own answers: the app's loader must give them
    back, within the tolerance of the precision it serves (--precision)."""
    from app.model import load_classifier

    version_dir = served_version()
    with np.load(version_dir / "golden.npz") as golden:
        images, expected = golden["images"], golden["probabilities"]
        one_view = golden["one_view"] if "one_view" in golden.files else None
    classifier = load_classifier(version_dir, precision=precision())  # type: ignore[arg-type]
    every = np.full(len(images), classifier.views_below("all"), np.float32)

    assert images.shape == (64, 32, 32, 3) and images.dtype == np.uint8
    assert_served_like(classifier.predict(images, every), expected, classifier.precision)
    if one_view is not None:
        one = np.full(len(images), classifier.views_below("one"), np.float32)
        assert_served_like(classifier.predict(images, one), one_view, classifier.precision)


def test_the_served_version_answers_most_images_from_one_view() -> None:
    """cifar10/3 (issue #24): adaptive views cost at most 2 passes per image on the test set in
    every precision measured, and lose at most 0.1 point against the six views of cifar10/2."""
    metadata = json.loads((served_version() / "metadata.json").read_text())
    six_views = json.loads((SHIPPED / "2" / "metadata.json").read_text())["metrics"]

    assert metadata["serving"]["views"]["policy"] == "adaptive"
    assert metadata["serving"]["forward_passes_per_image"] <= 2.0
    for name in {"f32", "bf16", "int8"} & set(metadata["precisions"]):
        assert metadata["precisions"][name]["forward_passes_per_image"] <= 2.0
    assert metadata["metrics"]["test_accuracy"] >= six_views["test_accuracy"] - 0.001


COMMITTED = [served_version(SHIPPED), SHIPPED / "2", SHIPPED / "1", served_version(BLOG)]


@pytest.mark.parametrize("version_dir", COMMITTED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_versions_carry_their_int8_model_and_per_precision_metrics(
    version_dir: Path,
) -> None:
    metadata = json.loads((version_dir / "metadata.json").read_text())
    precisions = metadata["precisions"]

    assert (version_dir / INT8_MODEL).is_file() and (version_dir / "golden.npz").is_file()
    assert {"f32", "int8"} <= set(precisions)
    for name in {"f32", "bf16", "int8"} & set(precisions):
        record = precisions[name]
        assert 0.5 < record["test_accuracy"] <= 1 and 0 <= record["ece"] < 1
        assert record["golden_tolerance"] == TOLERANCE[name]
        assert record["golden_max_diff"] <= record["golden_tolerance"]
    assert "training-split" in metadata["quantization"]["calibration"]


def test_the_served_version_in_int8_stays_within_03_points_of_f32() -> None:
    precisions = json.loads((served_version() / "metadata.json").read_text())["precisions"]

    assert precisions["test_images"] == 10_000
    assert precisions["f32"]["test_accuracy"] - precisions["int8"]["test_accuracy"] <= 0.003
    assert precisions["int8"]["ece"] < 0.02  # still calibrated


def test_the_served_version_is_calibrated_as_its_metadata_says() -> None:
    metadata = json.loads((served_version() / "metadata.json").read_text())
    calibration = metadata["metrics"]["test_calibration"]

    assert calibration["after"]["ece"] < calibration["before"]["ece"]
    assert calibration["after"]["nll"] <= calibration["before"]["nll"]
    assert metadata["serving"]["temperature"] == metadata["serving_choice"]["temperature"]


def test_the_blog_network_is_committed_after_its_full_schedule(make_client) -> None:
    """The blog's run (issue #15): 50 plain + 50 augmented epochs, and it serves like the default.

    Ten images cannot tell 89 % from the 25-epoch run's 85 %, so the accuracy is the one the
    export measured on the test set; the golden check at load (else no version would answer)
    ties that record to these weights, which are the same export's."""
    version_dir = served_version(BLOG)
    metadata = json.loads((version_dir / "metadata.json").read_text())
    assert metadata["training"]["epochs"] == 100
    assert [phase["epochs"] for phase in metadata["training"]["phases"]] == [50, 50]
    assert metadata["metrics"]["test_accuracy"] >= 0.885  # cifar10-seed/2 (25 epochs): 85.49 %
    assert (version_dir / "golden.npz").is_file()

    response = make_client(model_dir=BLOG).post("/predict", files=UPLOADS)

    assert response.status_code == 200
    assert response.json()["version"] == int(version_dir.name)
    labels = [p["label"] for p in response.json()["predictions"]]
    assert sum(label == t for label, t in zip(labels, TRUTH, strict=True)) >= len(PNGS) - 2
