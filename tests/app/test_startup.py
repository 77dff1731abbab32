"""A missing, corrupt or contract-breaking model stops the process at start-up, saying why."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

from app.backends import gpu_present
from app.model import ModelLoadError, describe_device, load_classifier, resolve_version_dir
from tests.conftest import REPO, break_version, export_tiny_model, precision
from tests.servers import run_to_exit, start_server, wait_until_healthy


def corrupt_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    broken = tmp_path / "broken" / "1"
    shutil.copytree(tiny_model_dir / "1", broken)
    return break_version(broken)


def test_highest_version_is_served(tmp_path: Path, tiny_model_dir: Path) -> None:
    for version in ("2", "10", "9"):
        shutil.copytree(tiny_model_dir / "1", tmp_path / version)
    # Not versions: int() refuses superscript 2 and reads Arabic-Indic 11 as 11.
    for other in ("notes", "\u00b2", "\u0661\u0661"):
        (tmp_path / other).mkdir()

    assert resolve_version_dir(tmp_path) == tmp_path / "10"


def test_missing_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such directory") as error:
        load_classifier(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(error.value)


def test_corrupt_model_is_refused_with_tensorflows_reason(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError, match="not a loadable SavedModel") as error:
        load_classifier(corrupt_copy(tiny_model_dir, tmp_path))
    # Not only the exception's type: TensorFlow's own message follows it.
    assert re.search(r"SavedModel \(\w+: \S.{10,}\)", str(error.value)), str(error.value)


def test_without_a_gpu_the_cuda_probe_is_explained(caplog: pytest.LogCaptureFixture) -> None:
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    with caplog.at_level(logging.INFO, logger="app.model"):
        assert describe_device() == "CPU"
    explained = any("cuInit" in record.getMessage() for record in caplog.records)
    assert explained == tf.test.is_built_with_cuda()


def test_metadata_disagreeing_with_the_signature_is_refused(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    version_dir = tmp_path / "1"
    shutil.copytree(tiny_model_dir / "1", version_dir)
    metadata = json.loads((version_dir / "metadata.json").read_text())
    metadata["labels"] = metadata["labels"][:5]
    (version_dir / "metadata.json").write_text(json.dumps(metadata))

    with pytest.raises(ModelLoadError, match="float32 \\[None, 5\\]"):
        load_classifier(version_dir)


def save_uniform_model(version_dir: Path, spec: tf.TensorSpec, metadata_from: Path) -> Path:
    """A SavedModel answering uniform probabilities for input `spec`, with valid metadata."""

    class Uniform(tf.Module):
        @tf.function(input_signature=[spec])
        def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"probabilities": tf.nn.softmax(tf.zeros([tf.shape(images)[0], 10]))}

    module = Uniform()
    tf.saved_model.save(module, str(version_dir), signatures={"serving_default": module.serve})
    shutil.copy(metadata_from / "metadata.json", version_dir)
    return version_dir


@pytest.mark.parametrize(
    ("shape", "dtype", "reason"),
    [
        ([None, 32, 32, 3], tf.float32, "not uint8"),
        ([None, 32, 48, 3], tf.uint8, "32x48; the service resizes uploads to a square"),
    ],
)
def test_contract_breaking_inputs_are_refused(
    shape: list, dtype: tf.DType, reason: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    spec = tf.TensorSpec(shape, dtype, name="images")
    version_dir = save_uniform_model(tmp_path / "1", spec, tiny_model_dir / "1")

    with pytest.raises(ModelLoadError, match=reason):
        load_classifier(version_dir)


def test_training_export_is_loadable(tmp_path: Path) -> None:
    classifier = load_classifier(export_tiny_model(tmp_path / "7", version=7))

    assert classifier.version == 7 and (classifier.height, classifier.width) == (32, 32)


@pytest.mark.parametrize("runner", ["uvicorn", "python -m app"])
@pytest.mark.parametrize("case", ["missing", "corrupt"])
def test_server_exits_non_zero_naming_path_and_reason(
    case: str, runner: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    model_dir = tmp_path / "absent" if case == "missing" else corrupt_copy(tiny_model_dir, tmp_path)
    if runner == "python -m app":
        result = run_to_exit(model_dir)
    else:
        result = subprocess.run(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--port", "0"],
            cwd=REPO,
            env=os.environ | {"MODEL_DIR": str(model_dir), "TF_CPP_MIN_LOG_LEVEL": "3"},
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert result.returncode != 0
    broken = "INT8 model" if precision() == "int8" else "SavedModel"
    reason = "no such directory" if case == "missing" else f"not a loadable {broken}"
    lines = [line for line in result.stderr.splitlines() if "cannot serve the model" in line]
    assert len(lines) == 1 and str(model_dir) in lines[0] and reason in lines[0]
    if runner == "python -m app":
        assert result.returncode == 3  # uvicorn's "failed to start", not a crash


@pytest.mark.skipif(gpu_present(), reason="a GPU shows: auto serves with TensorFlow")
def test_serving_on_openvino_never_loads_tensorflow(tiny_model_dir: Path) -> None:
    """`python -m app` as installed (TensorFlow is here, for the tests): auto picks OpenVINO,
    and no TensorFlow library is mapped into the serving process, GPU probe included."""
    server, port = start_server(tiny_model_dir)
    try:
        wait_until_healthy(port, server)
        mapped = Path(f"/proc/{server.pid}/maps").read_text()
    finally:
        server.terminate()
        server.wait(30)

    assert "/openvino/" in mapped
    # TensorFlow's own package; OpenVINO's SavedModel reader is openvino/frontend/tensorflow.
    assert "site-packages/tensorflow/" not in mapped
