"""Which resampling filter and aspect rule keep the served model most accurate?

CIFAR-10 test images are sent the way users send photos: the original 32x32 PNG, an upscaled
256x256 JPEG, and a 320x240 JPEG (stretched to 4:3, as a camera frame would be). Each is decoded
by app.preprocessing with every filter and both aspect rules, and classified by the model.

    python -m benchmarks.preprocessing_accuracy [--images 2000] [--model models/cifar10]
"""

import argparse
import csv
import io
import itertools
import time
from pathlib import Path

import numpy as np
from PIL import Image

from app.model import load_classifier
from app.preprocessing import decode_image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "test.npz"
RESULTS = Path(__file__).resolve().parent / "results"
FILTERS = ("box", "bilinear", "bicubic", "lanczos")
FITS = ("squash", "crop")


def as_user_upload(pixels: np.ndarray, payload: str) -> bytes:
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    if payload == "png32":
        image.save(buffer, format="PNG")
    elif payload == "jpeg256":
        image.resize((256, 256), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
    elif payload == "jpeg320x240":
        image.resize((320, 240), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="first N test images")
    parser.add_argument("--model", type=Path, default=Path("models/cifar10"))
    args = parser.parse_args()

    test = np.load(DATA)
    x, y = test["x"][: args.images], test["y"][: args.images]
    classifier = load_classifier(args.model)
    rows = []
    for payload in ("png32", "jpeg256", "jpeg320x240"):
        uploads = [as_user_upload(pixels, payload) for pixels in x]
        for resample, fit in itertools.product(FILTERS, FITS):
            started = time.perf_counter()
            batch = np.stack(
                [decode_image(d, max_pixels=10**8, resample=resample, fit=fit) for d in uploads]
            )
            decode_ms = (time.perf_counter() - started) * 1000 / len(uploads)
            predicted = np.concatenate(
                [classifier.predict(batch[i : i + 500]) for i in range(0, len(batch), 500)]
            ).argmax(axis=1)
            accuracy = float((predicted == y).mean())
            rows.append((payload, resample, fit, accuracy, decode_ms))
            print(
                f"{payload:12s} {resample:9s} {fit:7s} acc={accuracy:.4f} decode={decode_ms:.3f} ms"
            )

    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "preprocessing_accuracy.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["payload", "resample", "fit", "accuracy", "decode_ms_per_image"])
        writer.writerows(rows)
    lines = [
        f"Model {classifier.name} v{classifier.version}, first {len(y)} CIFAR-10 test images.",
        "",
        "| payload | resample | fit | accuracy | decode ms/image |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {p} | {r} | {f} | {a:.4f} | {d:.3f} |" for p, r, f, a, d in rows]
    (RESULTS / "preprocessing_accuracy.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
