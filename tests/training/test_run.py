"""The whole run on a tiny dataset: what lands in models/ and checkpoints/, and the CLIs."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import tensorflow as tf

from training.__main__ import main as train_main
from training.calibration import expected_calibration_error
from training.config import RunConfig
from training.evaluate import main as evaluate_main
from training.fit import FitClock, TrainingInterrupted
from training.hardware import choose_precision
from training.train import run

REPORT_FILES = {
    "history.csv",
    "loss.png",
    "accuracy.png",
    "confusion_matrix.png",
    "misclassified.png",
    "model_summary.txt",
    "calibration.png",
}


def small_run(npz_dir: Path, root: Path) -> RunConfig:
    """Two epochs on the tiny npz fixture, writing models and checkpoints under `root`."""
    return RunConfig(
        data=str(npz_dir),
        epochs=2,
        batch_size=32,
        val_size=40,
        models_dir=root / "models",
        checkpoints_dir=root / "checkpoints",
    )


@pytest.fixture(scope="module")
def fast_run(npz_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("run")
    return run(small_run(npz_dir, root)), root


def test_run_writes_the_artifact_to_the_next_version(fast_run: tuple[Path, Path]) -> None:
    version_dir, root = fast_run

    assert version_dir == root / "models" / "cifar10" / "1"
    assert {p.name for p in version_dir.iterdir()} >= {
        "saved_model.pb",
        "variables",
        "metadata.json",
        "golden.npz",
        "report",
        "int8",
    }
    assert not list((root / "models" / "cifar10").glob(".*"))  # the partial folder was renamed
    assert {p.name for p in (version_dir / "report").iterdir()} == REPORT_FILES
    assert not list(version_dir.rglob("*.weights.h5"))  # no checkpoint leaks into models/
    assert not (root / "checkpoints" / "cifar10" / "backup").exists()  # finished: nothing to resume


def test_metadata_is_complete_and_measured_through_the_signature(
    fast_run: tuple[Path, Path], npz_dir: Path
) -> None:
    version_dir, _ = fast_run
    metadata = json.loads((version_dir / "metadata.json").read_text())

    for key in ("name", "version", "labels", "input", "architecture", "dataset", "metrics"):
        assert key in metadata
    assert metadata["version"] == 1 and metadata["architecture"]["name"] == "fast"
    assert metadata["dataset"] | {"source": None} == {
        "name": "cifar10",
        "source": None,
        "train_size": 120,
        "val_size": 40,
        "test_size": 40,
    }
    training = metadata["training"]
    assert training["epochs"] == 2 and training["batch_size"] == 32 and training["seed"] == 0
    assert training["precision"] == choose_precision("auto").name
    assert training["wall_clock_seconds"] > 0
    assert "CPU" in training["hardware"] or "GPU" in training["hardware"]
    assert training["hyperparameters"]["epochs"] == 2
    assert metadata["created"].endswith("+00:00")

    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    with np.load(npz_dir / "test.npz") as test:
        feed = {"images": tf.constant(test["x"])}
        if "views" in metadata["serving"]:  # adaptive views, at the version's own threshold
            own = metadata["serving"]["views"]["all_views_below"]
            feed["all_views_below"] = tf.fill([len(test["x"])], own)
        probabilities = signature(**feed)["probabilities"].numpy()
        labels = test["y"]
    accuracy = float(np.mean(probabilities.argmax(1) == labels))
    metrics = metadata["metrics"]
    assert metrics["test_accuracy"] == pytest.approx(accuracy, abs=1e-4)
    assert set(metrics["per_class_accuracy"]) == set(metadata["labels"])
    assert 0 <= metrics["val_accuracy"] <= 1
    after = metrics["test_calibration"]["after"]
    assert after["accuracy"] == pytest.approx(accuracy, abs=1e-4)
    assert after["ece"] == pytest.approx(
        expected_calibration_error(probabilities, labels), abs=1e-4
    )
    serving = metadata["serving"]
    assert serving["tta_level"] == metadata["serving_choice"]["tta_level"]
    assert serving["temperature"] == metadata["serving_choice"]["temperature"] > 0
    assert not Path(metadata["dataset"]["source"].split(" ", 1)[1]).is_absolute()


def test_the_run_quantizes_on_training_images_and_measures_each_precision(
    fast_run: tuple[Path, Path],
) -> None:
    version_dir, _ = fast_run
    metadata = json.loads((version_dir / "metadata.json").read_text())

    # 120 training images after the 40 held out, all of them (fewer than 300) calibrate.
    assert metadata["quantization"]["calibration"] == "120 training-split images, seed 0"
    precisions = metadata["precisions"]
    assert precisions["test_images"] == 40
    for name in {"f32", "int8"} | ({"bf16"} & set(precisions)):
        assert 0 <= precisions[name]["test_accuracy"] <= 1
    # f32 through OpenVINO is the exported signature's own answer.
    assert precisions["f32"]["test_accuracy"] == metadata["metrics"]["test_accuracy"]


def test_seed_cli_runs_both_phases_and_takes_the_next_version(
    npz_dir: Path, tmp_path: Path
) -> None:
    """Under bfloat16, which TensorFlow emulates on any CPU: the augmenting phase once crashed
    there (its branch answered bfloat16 beside the plain phase's float32)."""
    models = tmp_path / "models"
    (models / "cifar10-seed" / "4").mkdir(parents=True)
    args = ["--arch", "seed", "--data", str(npz_dir), "--epochs", "1", "--aug-epochs", "1"]
    args += ["--precision", "bfloat16"]
    args += ["--val-size", "0", "--name", "cifar10-seed", "--models-dir", str(models)]
    args += ["--checkpoints-dir", str(tmp_path / "checkpoints"), "--tta", "1"]

    assert train_main(args) == 0

    metadata = json.loads((models / "cifar10-seed" / "5" / "metadata.json").read_text())
    assert metadata["training"]["epochs"] == 2
    assert metadata["training"]["precision"] == "bfloat16"
    assert [phase["epochs"] for phase in metadata["training"]["phases"]] == [1, 1]
    assert metadata["metrics"]["val_accuracy"] is None
    assert metadata["serving"]["tta_level"] == 1  # chosen by --tta: without it, 0 here
    history = (models / "cifar10-seed" / "5" / "report" / "history.csv").read_text()
    assert len(history.strip().splitlines()) == 3  # header + one row per epoch


def test_evaluate_cli_prints_accuracy_and_rewrites_figures(
    fast_run: tuple[Path, Path], npz_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    version_dir, _ = fast_run
    metadata = json.loads((version_dir / "metadata.json").read_text())

    args = [str(version_dir), "--data", str(npz_dir), "--report-dir", str(tmp_path)]
    assert evaluate_main(args) == 0

    out = capsys.readouterr().out
    assert f"test accuracy: {metadata['metrics']['test_accuracy']:.4f}" in out
    ece = metadata["metrics"]["test_calibration"]["after"]["ece"]
    assert f"test ECE (15 bins): {ece:.4f}" in out
    assert {p.name for p in tmp_path.iterdir()} == REPORT_FILES - {"model_summary.txt"}


def test_ctrl_c_keeps_the_checkpoint_and_resume_continues(
    npz_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = small_run(npz_dir, tmp_path)
    finish_epoch = FitClock.on_epoch_end

    def ctrl_c_after_first_epoch(self, epoch, logs=None):
        finish_epoch(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(FitClock, "on_epoch_end", ctrl_c_after_first_epoch)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        run(config)
    backup = tmp_path / "checkpoints" / "cifar10" / "backup"
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 1
    with h5py.File(backup / "latest.weights.h5") as checkpoint:
        assert "optimizer" in checkpoint  # step count (schedule) and momentum resume too
    assert not (tmp_path / "models" / "cifar10").exists()

    monkeypatch.undo()
    version_dir = run(RunConfig(**{**config.__dict__, "resume": True}))

    history = (version_dir / "report" / "history.csv").read_text().strip().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["0", "1"]  # epoch 0 ran only once


@pytest.mark.parametrize("tta", ["auto", "2"])
def test_the_tta_choice_is_made_on_the_validation_split(tta: str) -> None:
    """--tta N measures only level N on validation and keeps it; auto measures every level and
    keeps the best (the cheapest on a tie); the temperature is fitted on the level kept."""
    from tests.training.test_export import tiny_model
    from training.export import view_logits
    from training.serving_choice import choose_serving

    model = tiny_model(softmax=False)
    rng = np.random.default_rng(3)
    x_val = rng.integers(0, 256, (60, 32, 32, 3)).astype(np.uint8)
    y_val = rng.integers(0, 10, 60)

    level, temperature, _, report = choose_serving(
        model, x_val, y_val, {"tta": tta if tta == "auto" else int(tta), "calibrate": True}
    )

    measured = {
        str(n): round(
            float(
                np.mean(view_logits(model, x_val.astype("float32"), n).numpy().argmax(1) == y_val)
            ),
            4,
        )
        for n in ((0, 1, 2) if tta == "auto" else (2,))
    }
    assert report["tta_val_accuracy"] == measured
    best = max(measured.values())
    assert level == min(int(n) for n, a in measured.items() if a == best)
    assert report["tta_level"] == level and temperature > 0


@pytest.mark.parametrize("adaptive", [False, True])
def test_the_run_keeps_in_memory_what_the_export_writes(adaptive: bool, tmp_path: Path) -> None:
    """metadata.json is assembled in memory and written once: the record export_model returns,
    which the run adds to, is the one it wrote for the export's own readers, not a copy."""
    from tests.training.test_export import METADATA, tiny_model
    from training.data import CIFAR10_LABELS
    from training.export import AdaptiveViews, export_model, read_metadata
    from training.serving_choice import Serving

    model = tiny_model(softmax=False)
    views = AdaptiveViews(all_views_below=0.61234, one_view_temperature=1.3) if adaptive else None
    serving = Serving(2 if adaptive else 1, 1.23456, views, {})
    in_memory = export_model(
        model,
        tmp_path / "1",
        labels=CIFAR10_LABELS,
        metadata=METADATA,
        tta_level=serving.tta_level,
        temperature=serving.temperature,
        views=views,
    )

    assert json.dumps(in_memory) == json.dumps(read_metadata(tmp_path / "1"))
