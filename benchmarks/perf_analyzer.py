"""Triton's perf_analyzer against this service over the Open Inference Protocol (HTTP).

    python -m benchmarks.perf_analyzer --perf-analyzer PATH [--model models/cifar10]

perf_analyzer is Triton's own load tool; a user of the protocol measures a server with it.
Installing it on a CPU-only machine, outside this project's venv (it is a C++ binary):

    python3 -m venv /tmp/pa && /tmp/pa/bin/pip install "tritonclient[http]==2.41.1" \\
        nvidia-cuda-runtime-cu12          # the wheel ships bin/perf_analyzer; libcudart.so.12
    sudo apt-get install libb64-0d        # libb64.so.0d
    export LD_LIBRARY_PATH=/tmp/pa/lib/python3.11/site-packages/nvidia/cuda_runtime/lib

The service starts as `python -m app` does by default, alone, settled; perf_analyzer sends 64
real CIFAR-10 test images as UINT8 tensors (binary tensor data), one per request, at
concurrency 1, 8 and 64, and the table goes to benchmarks/results/perf_analyzer.md.
"""

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks import run

PORT = 8120
CONCURRENCY = (1, 8, 64)


def input_data(path: Path, count: int = 64) -> Path:
    """perf_analyzer's --input-data: real test images, since an adaptive model's cost depends
    on the image."""
    images = np.load(run.DATA)["x"][:count]
    rows = [{"images": {"content": x.ravel().tolist(), "shape": [32, 32, 3]}} for x in images]
    path.write_text(json.dumps({"data": rows}))
    return path


def measure(binary: str, version: int, data: Path, concurrency: int, folder: Path) -> dict:
    """One perf_analyzer run; its CSV row (throughput and latency percentiles, microseconds)."""
    csv = folder / f"c{concurrency}.csv"
    command = [
        binary, "-m", "cifar10", "-x", str(version), "-u", f"localhost:{PORT}", "-i", "http",
        "--concurrency-range", str(concurrency), "--measurement-interval", "5000",
        "--input-data", str(data), "-f", str(csv),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    header, row = csv.read_text().splitlines()[:2]
    return dict(zip(header.split(","), row.split(","), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--perf-analyzer", default="perf_analyzer", help="the binary")
    parser.add_argument("--model", type=Path, default=run.ROOT / "models" / "cifar10")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFERENCE_", "WORKERS"))}
    env |= {"MODEL_DIR": str(args.model), "PORT": str(PORT)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = input_data(Path(tmp) / "input.json")
        server = run.start([sys.executable, "-m", "app"], PORT, env, "/health")
        try:
            run.settle(server)
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health") as reply:
                health = json.load(reply)
            for concurrency in CONCURRENCY:
                row = measure(args.perf_analyzer, health["version"], data, concurrency, Path(tmp))
                rows.append((concurrency, row))
                print(f"c={concurrency}: {float(row['Inferences/Second']):.0f} infer/s", flush=True)
        finally:
            run.stop(server)
    served = f"`{health['model']}/{health['version']}`, {health['backend']} {health['precision']}"
    lines = [
        "# perf_analyzer against this service (Open Inference Protocol, HTTP)",
        "",
        f"`python -m benchmarks.perf_analyzer --perf-analyzer PATH`, "
        f"{dt.date.today().isoformat()}, {os.cpu_count()} CPUs ({run.cpu_model()}); "
        f"perf_analyzer from tritonclient 2.41.1; served {served} by `python -m app` with "
        "its defaults; one 32x32 UINT8 tensor per request (binary data), cycling through 64 "
        "CIFAR-10 test images; 5 s measurement windows until stable.",
        "",
        "| concurrency | infer/s | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for concurrency, row in rows:
        cells = [float(row[key]) / 1000 for key in ("p50 latency", "p90 latency", "p99 latency")]
        lines.append(
            f"| {concurrency} | {float(row['Inferences/Second']):,.0f} | "
            + " | ".join(f"{cell:.1f}" for cell in cells)
            + " |"
        )
    run.RESULTS.mkdir(parents=True, exist_ok=True)
    (run.RESULTS / "perf_analyzer.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {run.shown(run.RESULTS / 'perf_analyzer.md')}", flush=True)


if __name__ == "__main__":
    main()
