"""Training speed on the machine at hand: images/s per architecture, precision and allocator.

    python -m benchmarks.training [--seconds 30]

Each cell runs in its own process (the allocator is chosen at process start): it builds the
real recipe (`training.train.build`: the model, optimizer, loss and XLA setting the run uses)
under one precision policy, trains on random images for two steps to compile, then times whole
steps for at least `--seconds` (and at least two). The projected wall-clock is the default
schedule's images (epochs x training images) at that rate, evaluation not included. Writes
benchmarks/results/training.{md,csv}, named after the CPU it ran on.
"""

from __future__ import annotations

import argparse
import csv
import ctypes.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def measure(arch: str, precision_name: str, seconds: float) -> float:
    """Images/s of whole training steps, in this process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    from training import hardware
    from training.recipe import FAST_HYP, SEED_HYP, build

    hyp = dict(FAST_HYP if arch == "fast" else SEED_HYP)
    batch = hyp["batch_size"]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, 32, 32, 3)).astype("float32")
    labels = np.arange(batch) % 10
    keras.mixed_precision.set_global_policy(hardware.choose_precision(precision_name).policy)
    keras.utils.set_random_seed(0)
    model, _, one_hot, _ = build(arch, hyp, x.astype(np.uint8), 10, total_steps=1000)
    y = keras.utils.to_categorical(labels, 10) if one_hot else labels
    for _ in range(2):  # compile and warm up
        model.train_on_batch(x, y)
    steps, start = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - start < seconds:
        model.train_on_batch(x, y)
        steps += 1
    return steps * batch / (time.perf_counter() - start)


def cell(arch: str, precision: str, allocator: str | None, seconds: float) -> float:
    env = os.environ.copy()
    env.pop("LD_PRELOAD", None)
    if allocator is not None:
        env["LD_PRELOAD"] = allocator
    command = [sys.executable, "-m", "benchmarks.training", "--cell", arch, precision]
    command += ["--seconds", str(seconds)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30, help="timed seconds per cell")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--cell", nargs=2, metavar=("ARCH", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        print(json.dumps({"images_per_s": measure(*args.cell, args.seconds)}))
        return

    from training import hardware
    from training.recipe import FAST_HYP, SEED_HYP

    # Training images of each default run: --val-size 2000 for the shipped fast model, the
    # default 5000 for the seed; and its epochs.
    schedules = {
        "fast": (48_000, FAST_HYP["epochs"]),
        "seed": (45_000, SEED_HYP["epochs"] + SEED_HYP["aug_epochs"]),
    }
    auto = hardware.choose_precision("auto")
    tcmalloc = ctypes.util.find_library("tcmalloc_minimal")
    precisions = ["float32", "bfloat16"] + (["float16"] if hardware.gpus() else [])
    cells = [(arch, name, tcmalloc) for arch in schedules for name in precisions]
    # glibc's malloc beside tcmalloc, at the precision the run would pick.
    cells += [(arch, auto.name, None) for arch in schedules] if tcmalloc else []
    flags = sorted(hardware.cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    machine = hardware.describe()
    rows = []
    for arch, precision, allocator in cells:
        rate = cell(arch, precision, allocator, args.seconds)
        images, epochs = schedules[arch]
        rows.append(
            {
                "hardware": machine,
                "arch": arch,
                "precision": precision + (" (auto)" if precision == auto.name else ""),
                "malloc": "tcmalloc" if allocator else "glibc",
                "batch_size": (FAST_HYP if arch == "fast" else SEED_HYP)["batch_size"],
                "images_per_s": round(rate, 1),
                "default_schedule": f"{epochs} epochs x {images:,}",
                "projected_fit_min": round(images * epochs / rate / 60, 1),
            }
        )
        print(rows[-1], flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "training.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    columns = list(rows[0])[1:]
    lines = [
        f"Training speed on {machine}; CPU flags of note: {' '.join(flags) or 'none'}.",
        f"`--precision auto` picks {auto.name} here ({auto.reason}).",
        "Command: `python -m benchmarks.training`; random images, whole training steps, "
        f"at least {args.seconds:g} s per cell, each cell in its own process.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows),
    ]
    (args.out / "training.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
