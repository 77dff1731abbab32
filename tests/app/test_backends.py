"""Both inference backends serve the same model: they reproduce its golden set, agree with each
other through the app, and a version whose golden set they cannot reproduce is refused."""

import concurrent.futures
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pydantic import ValidationError

from app.backends import native_precisions, resolve_backend
from app.golden import GOLDEN_FILE, TOLERANCE
from app.model import Classifier, ModelLoadError, load_classifier
from app.settings import Settings
from tests.app.test_committed_model import served_version
from tests.app.test_startup import save_uniform_model
from tests.conftest import FIXTURES, LABELS, REPO, assert_served_like, precision
from training.export import write_golden

SERVED = served_version()
PNGS = sorted((FIXTURES / "cifar10").glob("*.png"))
BACKENDS = ["tensorflow", "openvino"]


def golden_of(version_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(version_dir / GOLDEN_FILE) as golden:
        return golden["images"], golden["probabilities"]


def served_classifier(client) -> Classifier:
    return client.app.state.repository.get().classifier


def precision_of(backend: str) -> str:
    """The run's --precision where `backend` can compute it; tensorflow computes f32 only."""
    return "f32" if backend == "tensorflow" else precision()


@pytest.fixture(scope="module")
def shipped() -> dict[str, Classifier]:
    """The committed model in both runtimes, f32, loaded once for the module."""
    return {name: load_classifier(SERVED, name, "f32") for name in BACKENDS}


@pytest.fixture
def tiny_version(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny test model's version, free to be given a golden set."""
    version_dir = tmp_path / "cifar10" / "1"
    shutil.copytree(tiny_model_dir / "1", version_dir)
    return version_dir


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_reproduces_the_committed_golden_set(
    shipped: dict[str, Classifier], backend: str
) -> None:
    classifier = shipped[backend]
    images, expected = golden_of(SERVED)

    # golden.npz's `probabilities` are every view's answers (a version with adaptive views)
    got = classifier.predict(images, np.full(len(images), classifier.views_below("all")))

    assert (classifier.backend, classifier.precision) == (backend, "f32")
    assert classifier.golden is not None and classifier.golden.passed
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE["f32"])


def test_the_backends_agree_with_each_other(shipped: dict[str, Classifier]) -> None:
    images, _ = golden_of(SERVED)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)  # off the training data, too
    batch = np.concatenate([images, noise])

    tensorflow, openvino = (shipped[name].predict(batch) for name in BACKENDS)

    np.testing.assert_array_equal(openvino.argmax(1), tensorflow.argmax(1))
    np.testing.assert_allclose(openvino, tensorflow, rtol=0, atol=TOLERANCE["f32"])


def test_openvino_answers_concurrent_callers_each_with_their_own_images(
    shipped: dict[str, Classifier],
) -> None:
    """The batcher calls predict from several threads; each must get its own answer."""
    images, _ = golden_of(SERVED)
    chunks = [images[i : i + 8] for i in range(0, len(images), 8)]
    alone = [shipped["openvino"].predict(chunk) for chunk in chunks]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(shipped["openvino"].predict, chunks * 3))

    for got, expected in zip(together, alone * 3, strict=True):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_the_app_on_openvino_answers_as_tensorflow_on_the_same_pngs(
    make_client, shipped: dict[str, Classifier]
) -> None:
    """In the run's precision (--precision), within the tolerance the app allows it."""
    client = make_client(model_dir=SERVED, inference_backend="openvino")
    files = [("files", (png.name, png.read_bytes(), "image/png")) for png in PNGS]

    response = client.post("/predict", files=files)

    assert response.status_code == 200
    assert served_classifier(client).backend == "openvino"
    served = response.json()["predictions"]
    pixels = np.stack([np.asarray(Image.open(png).convert("RGB")) for png in PNGS])
    expected = shipped["tensorflow"].predict(pixels)
    got = np.array([[p["probabilities"][label] for label in LABELS] for p in served])
    assert_served_like(got, expected, served_classifier(client).precision)
    assert [p["label"] for p in served] == [LABELS[int(i)] for i in got.argmax(1)]


WITHOUT_TENSORFLOW = """
import sys
from pathlib import Path

sys.modules["tensorflow"] = sys.modules["keras"] = None  # as if not installed: imports fail
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

with TestClient(create_app(Settings(model_dir=Path(sys.argv[1])))) as client:
    png = Path(sys.argv[2]).read_bytes()
    response = client.post("/predict", files=[("files", ("a.png", png, "image/png"))])
print(response.status_code, response.json()["predictions"][0]["label"])
"""


def test_openvino_serves_without_tensorflow_installed() -> None:
    """The slim image has no TensorFlow: nothing on the openvino path may import it."""
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW, str(SERVED), str(PNGS[0])],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["200", PNGS[0].stem.split("_", 1)[1]], result.stdout
    assert "reproduces golden.npz" in result.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_inference_backend_setting_chooses_the_runtime(make_client, backend: str) -> None:
    client = make_client(inference_backend=backend, inference_precision=precision_of(backend))

    assert served_classifier(client).backend == backend
    assert client.post("/predict", files=[("files", ("a.png", PNGS[0].read_bytes()))]).is_success


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_golden_set_of_the_models_own_answers_passes(tiny_version: Path, backend: str) -> None:
    images, _ = golden_of(SERVED)
    write_golden(tiny_version, images[:16])

    classifier = load_classifier(tiny_version, backend, precision_of(backend))

    assert classifier.golden is not None
    assert classifier.golden.passed and classifier.golden.images == 16


def write_wrong_golden(version_dir: Path, how: str) -> None:
    """golden.npz with the model's own answers, then broken by more than any precision's
    tolerance: all on another top-1 for one image, or one probability raised without changing
    any top-1."""
    write_golden(version_dir, golden_of(SERVED)[0][:16])
    images, probabilities = golden_of(version_dir)
    off = 2 * max(TOLERANCE.values())
    if how == "top-1":
        probabilities[3] = np.eye(len(LABELS))[(probabilities[3].argmax() + 1) % len(LABELS)]
    else:
        probabilities[5, probabilities[5].argmax()] += off
    np.savez_compressed(version_dir / GOLDEN_FILE, images=images, probabilities=probabilities)


@pytest.mark.parametrize("how", ["top-1", "probability"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_version_whose_golden_set_is_not_reproduced_is_refused(
    tiny_version: Path, backend: str, how: str
) -> None:
    write_wrong_golden(tiny_version, how)

    with pytest.raises(ModelLoadError, match=r"does not reproduce golden\.npz") as error:
        load_classifier(tiny_version, backend, precision_of(backend))

    found = re.search(
        r"(\d+) of 16 top-1 differ, largest probability difference (\S+) \(", str(error.value)
    )
    assert found and str(tiny_version) in str(error.value), str(error.value)
    # The break itself is what fails it: more than any tolerance, and the changed top-1 counted.
    assert float(found[2]) > max(TOLERANCE.values())
    assert int(found[1]) >= (1 if how == "top-1" else 0)


def test_the_app_refuses_to_start_on_a_golden_mismatch(
    make_client, tiny_version: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_wrong_golden(tiny_version, "top-1")

    with pytest.raises(ModelLoadError, match=r"does not reproduce golden\.npz"):
        make_client(model_dir=tiny_version.parent)

    err = capsys.readouterr().err
    logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(
        entry["level"] == "error"
        and str(tiny_version) in entry["message"]
        and "does not reproduce golden.npz" in entry["message"]
        for entry in logged
    ), logged


def test_a_malformed_golden_set_is_refused(tiny_version: Path) -> None:
    np.savez_compressed(tiny_version / GOLDEN_FILE, images=np.zeros((4, 16, 16, 3), np.uint8))

    with pytest.raises(ModelLoadError, match=r"golden\.npz is unreadable"):
        load_classifier(tiny_version)


def test_a_version_without_a_golden_set_loads_with_a_warning(
    tiny_version: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.model"):
        classifier = load_classifier(tiny_version)

    assert classifier.golden is None
    assert any("no golden.npz" in record.getMessage() for record in caplog.records)


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="TensorFlow sees a GPU")
def test_auto_serves_with_openvino_on_a_cpu(tiny_version: Path) -> None:
    assert resolve_backend("auto") == "openvino"
    assert load_classifier(tiny_version).backend == "openvino"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("shape", "dtype", "reason"),
    [
        (
            [None, 32, 32, 3],
            tf.float32,
            "input 'images' is float32 \\[None, 32, 32, 3\\], not uint8",
        ),
        ([None, 32, 48, 3], tf.uint8, "32x48; the service resizes uploads to a square"),
    ],
)
def test_both_backends_refuse_a_contract_breaking_model_alike(
    tmp_path: Path, tiny_model_dir: Path, backend: str, shape: list, dtype: tf.DType, reason: str
) -> None:
    spec = tf.TensorSpec(shape, dtype, name="images")
    version_dir = save_uniform_model(tmp_path / "1", spec, tiny_model_dir / "1")

    with pytest.raises(ModelLoadError, match=reason):
        load_classifier(version_dir, backend)


@pytest.mark.parametrize(
    "overrides",
    [
        {"inference_backend": "onnx"},
        {"inference_backend": "OpenVINO"},
        {"inference_precision": "fp16"},
        {"inference_backend": "tensorflow", "inference_precision": "bf16"},
        {"inference_backend": "tensorflow", "inference_precision": "int8"},
    ],
)
def test_unknown_backends_and_precisions_are_rejected_by_the_settings(overrides: dict) -> None:
    with pytest.raises(ValidationError):
        Settings(**overrides)


def test_unknown_backend_names_are_rejected_by_the_loader(tiny_version: Path) -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        load_classifier(tiny_version, "onnx")  # type: ignore[arg-type]


@pytest.mark.skipif("bf16" in native_precisions("openvino"), reason="this CPU computes bf16")
def test_bf16_asked_of_a_cpu_without_it_is_refused_with_the_reason(tiny_version: Path) -> None:
    """OpenVINO would quietly compute f32 there; an explicit choice is served or refused."""
    with pytest.raises(ModelLoadError, match="INFERENCE_PRECISION=bf16: openvino on this machine"):
        load_classifier(tiny_version, "openvino", "bf16")


@pytest.mark.parametrize("wanted", ["bf16", "int8"])
def test_tensorflow_refuses_any_precision_but_f32(tiny_version: Path, wanted: str) -> None:
    with pytest.raises(
        ModelLoadError, match=f"{wanted}: tensorflow on this machine computes only f32"
    ):
        load_classifier(tiny_version, "tensorflow", wanted)  # type: ignore[arg-type]
