"""`python -m training.quantize`: an INT8 model for a version exported without one, calibrated on
training images, and the per-precision record the app's `auto` reads."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.contract import INT8_MODEL
from app.model import load_classifier
from tests.conftest import export_tiny_model
from training.quantize import calibration_images
from training.quantize import main as quantize_main


def test_quantize_adds_int8_a_golden_set_and_the_record_to_an_older_version(
    npz_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    version_dir = export_tiny_model(tmp_path / "cifar10" / "1")
    shutil.rmtree(version_dir / INT8_MODEL.parent)  # as exported before INT8 existed

    args = [str(version_dir), "--data", str(npz_dir), "--calibration-size", "50"]
    assert quantize_main(args) == 0

    metadata = json.loads((version_dir / "metadata.json").read_text())
    assert metadata["quantization"]["calibration"] == "50 training-split images, seed 0"
    assert {"f32", "int8"} <= set(metadata["precisions"])
    assert metadata["precisions"]["test_images"] == 40
    assert (version_dir / "golden.npz").is_file()  # the golden check now has answers to compare
    assert not list(version_dir.glob(".*"))  # the partial folder was renamed into place
    classifier = load_classifier(version_dir, "openvino", "int8")
    assert classifier.precision == "int8" and classifier.golden is not None
    assert f"{version_dir}: quantized in" in capsys.readouterr().out


def test_calibration_images_are_a_seeded_sample_of_the_training_split() -> None:
    x_train = np.broadcast_to(np.arange(1000)[:, None, None, None], (1000, 1, 1, 3))

    first, again, other = (calibration_images(x_train, 300, seed) for seed in (0, 0, 1))

    assert first.shape == (300, 1, 1, 3) and len(np.unique(first[:, 0, 0, 0])) == 300
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first[:, 0, 0, 0].max() > 300  # spread over the split, not its first rows
