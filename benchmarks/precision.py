"""What each precision buys on this CPU: every committed model x every precision OpenVINO computes
natively here, bare img/s and test accuracy, in one run.

    python -m benchmarks.precision [--seconds 3] [--data ../shared/data/cifar10]

Each cell loads the version as the app does with that INFERENCE_PRECISION (golden check
included; every CPU of the quota), times back-to-back calls at batch 1, 32 and 256, and scores
the 10,000 test images through the same runtime. Compare the rates within one run only: they
are ratios on one machine. Writes benchmarks/results/precision.md and precision.csv.
"""

import argparse
import csv
import datetime as dt
from pathlib import Path

from app.contract import is_version_name
from app.cpu import available_cpus
from app.model import load_classifier
from benchmarks.run import RESULTS, ROOT, bare_rate, cpu_model, shown
from training.calibration import summary
from training.data import load_dataset
from training.hardware import cpu_flags
from training.quantize import predict_in_batches, servable_precisions

BATCHES = (1, 32, 256)
# The flags that decide what a precision costs: bf16 and int8 units, and the vector width.
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def committed_versions() -> list[Path]:
    return sorted(
        version
        for model in (ROOT / "models").iterdir()
        if model.is_dir()
        for version in model.iterdir()
        if is_version_name(version.name)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per batch size")
    parser.add_argument("--data", help="CIFAR-10 (default: the offline copy)")
    args = parser.parse_args()
    test = load_dataset(args.data)
    cpus = available_cpus()
    rows = []
    for version_dir in committed_versions():
        for precision in servable_precisions(version_dir):
            classifier = load_classifier(version_dir, "openvino", precision, threads=cpus)
            rates = {b: bare_rate(classifier, b, args.seconds) for b in BATCHES}
            scored = summary(predict_in_batches(classifier.predict, test.x_test), test.y_test)
            rows.append(
                {
                    "model": f"{version_dir.parent.name}/{version_dir.name}",
                    "precision": precision,
                    **{f"img_s_batch_{b}": round(rate) for b, rate in rates.items()},
                    "test_accuracy": scored["accuracy"],
                    "ece": scored["ece"],
                }
            )
            print(rows[-1], flush=True)
    write(rows, cpus)


def write(rows: list[dict], cpus: int) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "precision.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    baseline = {r["model"]: r for r in rows if r["precision"] == "f32"}
    flags = [flag for flag in FLAGS if flag in cpu_flags()]
    lines = [
        "# Precision: bare OpenVINO img/s and test accuracy per committed model",
        "",
        f"{cpu_model()}, {cpus} CPUs, flags: {', '.join(flags) or 'none of ' + str(FLAGS)}; "
        f"`python -m benchmarks.precision`, {dt.date.today().isoformat()}. Each cell is the model "
        "loaded as the app loads it with that `INFERENCE_PRECISION` (one stream, every CPU), "
        "timed back to back; accuracy and ECE on the 10,000 CIFAR-10 test images through the "
        "same runtime. Only the precisions this CPU computes natively are listed.",
        "",
        "| model | precision | img/s batch 1 | 32 | 256 | x f32 at 256 | test accuracy | ECE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["img_s_batch_256"] / baseline[r["model"]]["img_s_batch_256"]
        lines.append(
            f"| `{r['model']}` | {r['precision']} | {r['img_s_batch_1']:,} | "
            f"{r['img_s_batch_32']:,} | {r['img_s_batch_256']:,} | {ratio:.2f}x | "
            f"{100 * r['test_accuracy']:.2f} % | {100 * r['ece']:.2f} % |"
        )
    (RESULTS / "precision.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {shown(RESULTS / 'precision.md')}")


if __name__ == "__main__":
    main()
