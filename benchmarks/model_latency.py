"""The floor under /predict's latency at concurrency 1: one model call plus the HTTP work.

    python -m benchmarks.model_latency [--model models/cifar10/1] [--calls 400] [--rounds 3]

Calls the model at batch 1, as the service loads it (every CPU of the quota), on each installed
backend: back to back, and with a 2 ms pause before each call, as at concurrency 1, where the
HTTP work of the next request separates two calls and the runtime's threads go idle between
them. Then drives, at concurrency 1 with a 32x32 PNG, `benchmarks/http_floor.py` (the same
multipart parsing, Pillow decode and JSON answer with no model, no middleware, no batcher) and
the service as `python -m app` starts, round after round. Writes
benchmarks/results/model_latency.md.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from app.cpu import available_cpus
from app.model import load_classifier
from benchmarks.run import (
    RESULTS,
    ROOT,
    backends_here,
    cpu_model,
    drive,
    ensure_wrk,
    make_payloads,
    served_as,
    settle,
    shown,
    start,
    stop,
)

GAPS_S = (0.0, 0.002)
PORT = 8107
FLOOR = "HTTP floor (`benchmarks/http_floor.py`, no model)"
SERVICE = "this service (`python -m app`, defaults)"


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


def model_rows(model: Path, calls: int, cpus: int) -> tuple[list[str], dict[str, float]]:
    """Table rows per backend and gap, and each backend's p50 with the gap, by name."""
    rows, paused_p50 = [], {}
    for backend in backends_here():
        classifier = load_classifier(model, backend=backend, threads=cpus)
        images = np.zeros((1, classifier.height, classifier.width, 3), np.uint8)
        for gap_s in GAPS_S:
            p50, p90, p99 = np.percentile(
                latencies_ms(classifier.predict, images, calls, gap_s), (50, 90, 99)
            )
            served = f"{classifier.backend} {classifier.precision}"
            rows.append(f"| {served} | {gap_s * 1000:g} ms | {p50:.2f} | {p90:.2f} | {p99:.2f} |")
            print(rows[-1], flush=True)
            if gap_s:
                paused_p50[served] = p50
    return rows, paused_p50


def http_rows(model: Path, rounds: int, seconds: float) -> tuple[list[str], dict[str, float], str]:
    """Table rows for the HTTP floor and the service at concurrency 1 (median of the rounds),
    each one's p50 by name, and how the service computed."""
    servers = {
        FLOOR: (
            [
                sys.executable,
                "-m",
                "uvicorn",
                "benchmarks.http_floor:app",
                "--port",
                str(PORT),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            {},
        ),
        SERVICE: (
            [sys.executable, "-m", "app"],
            {"MODEL_DIR": str(model), "PORT": str(PORT)},
        ),
    }
    seen: dict[str, list[dict]] = {name: [] for name in servers}
    served = ""
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "png32.png"
        make_payloads(Path(tmp))
        for _ in range(rounds):
            for name, (command, extra) in servers.items():
                process = start(command, PORT, os.environ | extra)
                try:
                    settle(process)
                    if name == SERVICE:
                        served = served_as(PORT)
                    drive(PORT, png, 1, 1, 2)  # warm-up
                    seen[name].append(drive(PORT, png, 1, 1, seconds))
                finally:
                    stop(process)
    rows, p50s = [], {}
    for name, runs in seen.items():
        rate = statistics.median(r["requests"] / (r["duration_us"] / 1e6) for r in runs)
        p50, p95, p99 = (
            statistics.median(r[k] / 1000 for r in runs) for k in ("p50_us", "p95_us", "p99_us")
        )
        rows.append(f"| {name} | {rate:.0f} | {p50:.2f} | {p95:.2f} | {p99:.2f} |")
        print(rows[-1], flush=True)
        p50s[name] = p50
    return rows, p50s, served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "cifar10" / "1")
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    ensure_wrk()
    cpus = available_cpus()
    model_table, model_p50 = model_rows(args.model, args.calls, cpus)
    http_table, http_p50, served = http_rows(args.model, args.rounds, args.duration)
    floor, service = http_p50[FLOOR], http_p50[SERVICE]
    lines = [
        f"Measured by `python -m benchmarks.model_latency --calls {args.calls} --rounds "
        f"{args.rounds} --duration {args.duration:g}` on {cpus} CPUs ({cpu_model()}), model "
        f"`{shown(args.model)}`.",
        "",
        "One model call at batch 1, ms:",
        "",
        "| backend | pause before each call | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|---|",
        *model_table,
        "",
        f"One 32x32 PNG per request at concurrency 1 (wrk, {args.duration:g} s per run, median "
        f"of {args.rounds} rounds, the two servers alternating; the service ran {served}):",
        "",
        "| server | images/s | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|",
        *http_table,
        "",
        f"Floor under the service's p50: the HTTP floor ({floor:.2f} ms) + one {served} call "
        f"after a pause ({model_p50[served]:.2f} ms) = {floor + model_p50[served]:.2f} ms; "
        f"the service: {service:.2f} ms, {service - floor - model_p50[served]:.2f} ms above it "
        "(its middleware, dependencies, batcher and response schema).",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model_latency.md").write_text("\n".join(lines) + "\n")
    print(lines[-1])


if __name__ == "__main__":
    main()
