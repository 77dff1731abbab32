"""Processes against threads: how `python -m app` should split the CPUs, measured.

    python -m benchmarks.split [--rounds 3] [--duration 5] [--model models/cifar10/1]

Starts the service once per split (WORKERS processes, each OpenVINO call on INFERENCE_THREADS
CPUs), and once as round 1 ran it (`single`: one process on TensorFlow), round after round so
that a machine whose speed drifts treats every row alike, drives each with wrk (a 32x32 PNG at
concurrency 1, 8 and 64; requests of 16 PNGs at 1 and 8; a 4000x3000 JPEG at 8) and writes the
median of the rounds per cell to benchmarks/results/split.md.
"""

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.run import (
    RESULTS,
    ROOT,
    cpu_model,
    drive,
    ensure_wrk,
    make_payloads,
    settle,
    shown,
    start,
    stop,
)

PORT = 8106
# payload file, images per request, concurrency
CELLS = (
    ("png32.png", 1, 1),
    ("png32.png", 1, 8),
    ("png32.png", 1, 64),
    ("png32.png", 16, 1),
    ("png32.png", 16, 8),
    ("jpeg4000x3000.jpg", 1, 8),
)
SINGLE = "single (round 1: 1 process, TensorFlow)"


def default_split(cpus: int) -> str:
    return f"{cpus} processes x {cpus} threads (default)"


def splits(cpus: int) -> dict[str, dict[str, str]]:
    """Name -> environment: one process with every CPU; a process per CPU with one CPU or all;
    and round 1's single TensorFlow process, which no split may be slower than."""
    return {
        f"1 process x {cpus} threads": {"WORKERS": "1", "INFERENCE_THREADS": str(cpus)},
        f"{cpus} processes x 1 thread": {"WORKERS": str(cpus), "INFERENCE_THREADS": "1"},
        default_split(cpus): {"WORKERS": str(cpus), "INFERENCE_THREADS": str(cpus)},
        SINGLE: {"WORKERS": "1", "INFERENCE_BACKEND": "tensorflow"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "cifar10" / "1")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    ensure_wrk()
    env = os.environ | {
        "MODEL_DIR": str(args.model),
        "PORT": str(PORT),
        "LOG_LEVEL": "warning",
        "INFERENCE_BACKEND": "openvino",
    }
    # split -> cell -> (images/s, p50 ms, p99 ms) per round
    seen: dict[str, dict[tuple, list[tuple[float, float, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_payloads(folder)
        for round_ in range(args.rounds):
            for name, extra in splits(cpus).items():
                process = start([sys.executable, "-m", "app"], PORT, env | extra)
                try:
                    settle(process)
                    drive(PORT, folder / "png32.png", 1, 8, 2)  # warm-up
                    for cell in CELLS:
                        file, count, concurrency = cell
                        stats = drive(PORT, folder / file, count, concurrency, args.duration)
                        rate = (stats["requests"] - stats["errors"]) * count
                        result = (
                            rate / (stats["duration_us"] / 1e6),
                            stats["p50_us"] / 1000,
                            stats["p99_us"] / 1000,
                        )
                        seen.setdefault(name, {}).setdefault(cell, []).append(result)
                finally:
                    stop(process)
                print(f"round {round_ + 1}: {name} done", flush=True)
    write(seen, args, cpus)


def write(seen: dict, args: argparse.Namespace, cpus: int) -> None:
    header = " | ".join(
        f"{payload_label(file, count)} c={concurrency}" for file, count, concurrency in CELLS
    )
    lines = [
        f"Measured by `python -m benchmarks.split --rounds {args.rounds} --duration "
        f"{args.duration:g}` on {cpus} CPUs ({cpu_model()}), model "
        f"`{shown(args.model)}`, OpenVINO f32 (TensorFlow f32 in `single`): median of "
        f"{args.rounds} rounds per cell, images/s (p50 / p99 ms).",
        "",
        f"| split | {header} |",
        "|---|" + "---|" * len(CELLS),
    ]
    medians = {
        name: {
            cell: [statistics.median(run[i] for run in runs) for i in range(3)]
            for cell, runs in cells.items()
        }
        for name, cells in seen.items()
    }
    for name, cells in medians.items():
        row = [f"{rate:.0f} ({p50:.1f} / {p99:.1f})" for rate, p50, p99 in cells.values()]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    default, single = medians[default_split(cpus)], medians[SINGLE]
    ratios = [f"{default[cell][0] / single[cell][0]:.2f}" for cell in CELLS]
    lines.append("| default / single (images/s) | " + " | ".join(ratios) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "split.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def payload_label(file: str, count: int) -> str:
    name = {"png32.png": "PNG", "jpeg4000x3000.jpg": "4000x3000 JPEG"}[file]
    return f"{count} {name}s" if count > 1 else name


if __name__ == "__main__":
    main()
