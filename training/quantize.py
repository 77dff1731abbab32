"""INT8 beside the SavedModel, and what each precision costs: `python -m training.quantize DIR...`.

NNCF's post-training quantization (the OpenVINO ecosystem's own tool) turns the exported graph,
as OpenVINO reads it, into `int8/model.xml` inside the version folder, calibrated on training
images (never test). Then every precision this CPU serves natively is measured through the
app's own backend on the test set, and metadata.json records per precision the test accuracy,
the ECE and the golden set's largest difference beside its tolerance: what the app's
`INFERENCE_PRECISION=auto` reads (app/precision.py). The training run calls the same two steps
at export; for a version exported before, this command adds them without retraining.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.backends import Precision
from app.contract import INT8_MODEL

# Training images NNCF sees. Its own default is 300; cifar10/3 (adaptive views) served in int8
# reached 94.04 % test accuracy with 1,000 (as committed) and 93.99 % with 300 in a trial (AMD
# EPYC Zen 4, one run each).
CALIBRATION_SIZE = 1000
MEASURE_BATCH = 256


def calibration_images(x_train: np.ndarray, count: int = CALIBRATION_SIZE, seed: int = 0):
    """A seeded random sample of the training split, spread over it rather than its first rows."""
    rng = np.random.default_rng(seed)
    return x_train[rng.choice(len(x_train), min(count, len(x_train)), replace=False)]


def quantize(version_dir: Path, images: np.ndarray) -> Path:
    """Write `version_dir/int8/model.xml` (+ .bin), NNCF's INT8 model calibrated on `images`.

    Written beside it under a temporary name and renamed into place, so a server polling the
    folder never reads half a model."""
    # NNCF sends usage telemetry unless it believes it runs in CI: it never phones home here.
    os.environ.setdefault("NNCF_CI", "1")
    import nncf
    import openvino as ov

    from app.contract import INPUT_NAME, VIEWS_INPUT

    model = ov.Core().read_model(str(version_dir))
    images = np.asarray(images, np.uint8)
    if any(VIEWS_INPUT in port.get_names() for port in model.inputs):
        # Every view, so the statistics cover the extra views' branch as well as the first.
        name_every_tensor(model)
        every_view = np.full(1, 2.0, np.float32)  # above any probability; inf breaks NNCF 3.4
        calibration = nncf.Dataset([{INPUT_NAME: x[None], VIEWS_INPUT: every_view} for x in images])
    else:
        calibration = nncf.Dataset([image[None] for image in images])
    quantized = nncf.quantize(model, calibration, subset_size=len(images))
    target = version_dir / INT8_MODEL.parent
    partial = version_dir / f".{INT8_MODEL.parent}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    ov.save_model(quantized, str(partial / INT8_MODEL.name), compress_to_fp16=False)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return version_dir / INT8_MODEL


def name_every_tensor(model: Any) -> None:
    """Name the tensors OpenVINO's TensorFlow reader left unnamed, in the If bodies too: NNCF
    3.4 looks an If's inputs up by name and fails on an unnamed one (adaptive views' graph)."""
    for op in model.get_ordered_ops():
        for index, output in enumerate(op.outputs()):
            if not output.get_names():
                output.get_tensor().set_names({f"{op.get_friendly_name()}:{index}"})
        if op.get_type_name() == "If":
            for body in (op.get_function(0), op.get_function(1)):
                name_every_tensor(body)


def servable_precisions(version_dir: Path) -> list[Precision]:
    """The precisions the openvino backend can serve this version in on this CPU: the native
    ones, int8 only where the version has its INT8 model."""
    from app.backends import native_precisions

    return [
        precision
        for precision in native_precisions("openvino")
        if precision != "int8" or (version_dir / INT8_MODEL).is_file()
    ]


def predict_in_batches(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray):
    """`predict` over `images` in batches of MEASURE_BATCH, as one array."""
    return np.concatenate(
        [predict(images[i : i + MEASURE_BATCH]) for i in range(0, len(images), MEASURE_BATCH)]
    )


def measure(version_dir: Path, x_test: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
    """Per precision the CPU computes natively: test accuracy and ECE through the app's openvino
    backend, and how far from golden.npz it lands against the tolerance the app allows. A
    version with adaptive views is measured at its own threshold, with the network passes per
    image that cost in that precision."""
    import openvino as ov

    from app.backends import load_backend
    from app.golden import TOLERANCE, read_golden
    from training import calibration, hardware
    from training.export import read_metadata
    from training.views import passes

    metadata = read_metadata(version_dir)
    golden = read_golden(version_dir, *x_test.shape[1:3], len(metadata["labels"]))
    views = metadata.get("serving", {}).get("views")
    record: dict[str, Any] = {
        "measured_on": hardware.describe(),
        "runtime": f"openvino {ov.__version__.split('-')[0]}",
        "test_images": len(x_test),
    }
    for precision in servable_precisions(version_dir):
        backend = load_backend(version_dir, "openvino", precision)

        own = None if views is None else views["all_views_below"]
        probabilities = answers(backend, x_test, own)
        summary = calibration.summary(probabilities, y_test)
        record[precision] = {
            "test_accuracy": summary["accuracy"],
            "ece": summary["ece"],
            "golden_tolerance": TOLERANCE[precision],
        }
        if views is not None:
            one_view = answers(backend, x_test, 0.0).max(axis=1)
            record[precision]["forward_passes_per_image"] = passes(
                one_view, own, views["passes"]["all"]
            )
        if golden is not None:
            result = golden.check(backend, precision)
            record[precision]["golden_max_diff"] = float(f"{result.max_abs_diff:.3g}")
    return record


def answers(backend: Any, images: np.ndarray, views_below: float | None = None) -> np.ndarray:
    """`backend`'s probabilities for `images`, in batches; a model with adaptive views gets
    `views_below` for every image (None: every view)."""

    def predict(x: np.ndarray) -> np.ndarray:
        thresholds = None if views_below is None else np.full(len(x), views_below, np.float32)
        return backend.predict(x, thresholds)

    return predict_in_batches(predict, images)


def quantize_and_measure(
    version_dir: Path,
    x_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    calibration_size: int = CALIBRATION_SIZE,
    seed: int = 0,
) -> dict[str, Any]:
    """The INT8 model, then metadata.json's `quantization` and `precisions` for this version."""
    import nncf

    started = time.perf_counter()
    quantize(version_dir, calibration_images(x_train, calibration_size, seed))
    quantization = {
        "tool": f"nncf {nncf.__version__} quantize (post-training, default preset)",
        "model": str(INT8_MODEL),
        "calibration": f"{min(calibration_size, len(x_train))} training-split images, seed {seed}",
        "seconds": round(time.perf_counter() - started, 1),
    }
    return {"quantization": quantization, "precisions": measure(version_dir, x_test, y_test)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.quantize", description=__doc__)
    parser.add_argument("version_dirs", nargs="+", type=Path, help="exported version folders")
    parser.add_argument("--data", help="as python -m training --data (default: the offline copy)")
    parser.add_argument("--calibration-size", type=int, default=CALIBRATION_SIZE)
    parser.add_argument("--seed", type=int, default=0, help="which training images calibrate")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from training.data import load_dataset, split_validation
    from training.export import (
        GOLDEN_FILE,
        GOLDEN_SIZE,
        read_metadata,
        write_golden,
        write_metadata,
    )

    dataset = load_dataset(args.data)
    for version_dir in args.version_dirs:
        metadata = read_metadata(version_dir)
        # The images the version trained on: its validation split stays out of calibration too.
        val_size = int(metadata.get("dataset", {}).get("val_size", 0))
        x_train = split_validation(dataset.x_train, dataset.y_train, val_size).x_train
        if not (version_dir / GOLDEN_FILE).is_file():
            write_golden(version_dir, dataset.x_test[:GOLDEN_SIZE])
        metadata |= quantize_and_measure(
            version_dir,
            x_train,
            dataset.x_test,
            dataset.y_test,
            calibration_size=args.calibration_size,
            seed=args.seed,
        )
        write_metadata(version_dir, metadata)
        accuracies = ", ".join(
            f"{p} {100 * metadata['precisions'][p]['test_accuracy']:.2f} %"
            for p in ("f32", "bf16", "int8")
            if p in metadata["precisions"]
        )
        seconds = metadata["quantization"]["seconds"]
        print(
            f"{version_dir}: quantized in {seconds:.0f} s; test accuracy {accuracies}", flush=True
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
