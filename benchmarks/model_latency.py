"""The floor under /predict's latency at concurrency 1: one model call at batch 1.

    python -m benchmarks.model_latency [--model models/cifar10/1] [--calls 400]

Calls the model at batch 1, as the service loads it (every CPU of the quota), on each installed
backend: back to back, and with a 2 ms pause before each call, as at concurrency 1, where the
HTTP work of the next request separates two calls and the runtime's threads go idle between
them. Writes benchmarks/results/model_latency.md.
"""

import argparse
import time
from pathlib import Path

import numpy as np

from app.cpu import available_cpus
from app.model import load_classifier
from benchmarks.run import RESULTS, ROOT, backends_here, cpu_model, shown

GAPS_S = (0.0, 0.002)


def latencies_ms(predict, images: np.ndarray, calls: int, gap_s: float) -> np.ndarray:
    for _ in range(50):  # warm-up
        predict(images)
    seconds = []
    for _ in range(calls):
        if gap_s:
            time.sleep(gap_s)
        started = time.perf_counter()
        predict(images)
        seconds.append(time.perf_counter() - started)
    return np.array(seconds) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "cifar10" / "1")
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    cpus = available_cpus()
    lines = [
        f"Measured by `python -m benchmarks.model_latency --calls {args.calls}` on {cpus} CPUs "
        f"({cpu_model()}), model `{shown(args.model)}`: one call at batch 1, ms.",
        "",
        "| backend | pause before each call | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for backend in backends_here():
        classifier = load_classifier(args.model, backend=backend, threads=cpus)
        images = np.zeros((1, classifier.height, classifier.width, 3), np.uint8)
        for gap_s in GAPS_S:
            ms = latencies_ms(classifier.predict, images, args.calls, gap_s)
            p50, p90, p99 = np.percentile(ms, (50, 90, 99))
            line = (
                f"| {classifier.backend} {classifier.precision} | {gap_s * 1000:g} ms "
                f"| {p50:.2f} | {p90:.2f} | {p99:.2f} |"
            )
            lines.append(line)
            print(line, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model_latency.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
