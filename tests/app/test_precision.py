"""Precision as a stated choice: the auto rule, explicit choices served or refused, and the
tolerance each precision is held to, checked on any CPU."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.backends import native_precisions
from app.contract import INT8_MODEL, ModelLoadError
from app.golden import GOLDEN_FILE, compare
from app.model import load_classifier
from app.precision import MAX_ACCURACY_LOSS, plan
from tests.app.test_committed_model import SHIPPED, served_version
from training.export import write_golden

ALL_NATIVE = ("int8", "bf16", "f32")


def recorded(**accuracies: float) -> dict:
    return {"precisions": {name: {"test_accuracy": value} for name, value in accuracies.items()}}


@pytest.fixture
def tiny_version(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model's version (it has an INT8 model), with a golden set."""
    version_dir = tmp_path / "cifar10" / "1"
    shutil.copytree(tiny_model_dir / "1", version_dir)
    images = np.random.default_rng(1).integers(0, 256, (16, 32, 32, 3), np.uint8)
    write_golden(version_dir, images)
    return version_dir


def round_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 rounded to bfloat16's 8 significant bits (round half to even), as float32."""
    bits = np.asarray(values, np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def test_bfloat16_rounding_of_the_golden_answers_passes_bf16_and_fails_f32() -> None:
    """The tolerance rule on bf16 arithmetic without a bf16 CPU: logits rounded as bf16 rounds,
    softmax, against the exact answers."""
    with np.load(served_version() / GOLDEN_FILE) as golden:
        expected = golden["probabilities"]
    served = np.exp(round_to_bfloat16(np.log(expected)))
    served /= served.sum(axis=1, keepdims=True)

    assert np.abs(served - expected).max() > 0  # the rounding changed something
    # and it is bf16's: 8 significant bits, a tie to the even neighbour
    assert round_to_bfloat16(np.float32(1 + 2**-8)) == 1
    assert round_to_bfloat16(np.float32(1 + 3 * 2**-8)) == 1 + 2**-6
    assert compare(served, expected, "bf16").passed
    assert not compare(served, expected, "f32").passed


def test_auto_takes_the_fastest_native_precision_within_the_accuracy_rule(
    tiny_version: Path,
) -> None:
    chosen = plan(
        "auto", "openvino", ALL_NATIVE, tiny_version, recorded(f32=0.94, int8=0.938, bf16=0.94)
    )

    assert chosen.candidates == ("int8", "bf16", "f32") and not chosen.explicit


def test_auto_passes_over_a_precision_that_costs_more_than_03_points(tiny_version: Path) -> None:
    metadata = recorded(f32=0.94, int8=0.94 - MAX_ACCURACY_LOSS - 0.001, bf16=0.94)

    chosen = plan("auto", "openvino", ALL_NATIVE, tiny_version, metadata)

    assert chosen.candidates == ("bf16", "f32")
    assert any(
        note.startswith("int8: 93.60 % on test against f32's 94.00 %") for note in chosen.notes
    )


def test_auto_needs_a_record_a_native_unit_and_an_int8_model(tiny_version: Path) -> None:
    no_records = plan("auto", "openvino", ALL_NATIVE, tiny_version, {})
    no_bf16 = plan("auto", "openvino", ("int8", "f32"), tiny_version, recorded(f32=0.9, bf16=0.9))
    (tiny_version / INT8_MODEL).unlink()
    no_int8 = plan("auto", "openvino", ALL_NATIVE, tiny_version, recorded(f32=0.9, int8=0.9))

    assert no_records.candidates == no_bf16.candidates == no_int8.candidates == ("f32",)
    assert "bf16: openvino does not compute natively here" in no_bf16.notes
    assert f"int8: no {INT8_MODEL}" in no_int8.notes


def test_an_explicit_precision_is_the_only_candidate(tiny_version: Path) -> None:
    chosen = plan("bf16", "openvino", ALL_NATIVE, tiny_version, recorded(f32=0.9, bf16=0.1))

    assert chosen.candidates == ("bf16",) and chosen.explicit


def wrong_int8(version_dir: Path) -> None:
    """Replace the version's INT8 model with another network's (the committed version 1's: the
    same contract, confident answers where the untrained tiny model's are near-uniform)."""
    shutil.rmtree(version_dir / INT8_MODEL.parent)
    shutil.copytree(SHIPPED / "1" / INT8_MODEL.parent, version_dir / INT8_MODEL.parent)


def test_auto_falls_back_past_an_int8_model_that_fails_its_golden_check(
    tiny_version: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metadata = json.loads((tiny_version / "metadata.json").read_text())
    metadata |= recorded(f32=0.5, int8=0.5, bf16=0.5)
    (tiny_version / "metadata.json").write_text(json.dumps(metadata))
    wrong_int8(tiny_version)

    with caplog.at_level(logging.INFO, logger="app.model"):
        classifier = load_classifier(tiny_version, "openvino", "auto")

    assert classifier.precision == ("bf16" if "bf16" in native_precisions("openvino") else "f32")
    assert "int8 does not reproduce golden.npz" in classifier.precision_reason
    [line] = [r.getMessage() for r in caplog.records if "serving openvino" in r.getMessage()]
    assert classifier.precision_reason in line and "reproduces golden.npz" in line


def test_an_explicit_int8_that_fails_its_golden_check_is_refused(
    tiny_version: Path, tmp_path: Path
) -> None:
    wrong_int8(tiny_version)

    with pytest.raises(ModelLoadError, match=r"openvino int8 does not reproduce golden\.npz"):
        load_classifier(tiny_version, "openvino", "int8")


def test_int8_without_an_int8_model_is_refused_naming_the_command(tiny_version: Path) -> None:
    shutil.rmtree(tiny_version / INT8_MODEL.parent)

    with pytest.raises(
        ModelLoadError, match=r"needs int8/model\.xml.*python -m training\.quantize"
    ):
        load_classifier(tiny_version, "openvino", "int8")


def test_the_committed_version_under_auto_costs_at_most_03_points() -> None:
    """Whatever this CPU offers: what auto serves was measured within the rule, and every faster
    native precision it passed over is named with its reason."""
    version_dir = served_version()
    precisions = json.loads((version_dir / "metadata.json").read_text())["precisions"]

    classifier = load_classifier(version_dir, "openvino", "auto")

    native = native_precisions("openvino")
    assert classifier.precision in native
    loss = precisions["f32"]["test_accuracy"] - precisions[classifier.precision]["test_accuracy"]
    assert loss <= MAX_ACCURACY_LOSS
    for faster in native[: native.index(classifier.precision)]:
        assert f"; {faster}: " in classifier.precision_reason
