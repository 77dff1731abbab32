"""Triton's perf_analyzer against this service over the Open Inference Protocol, HTTP and
gRPC, beside our own load tool (wrk on /predict) in the same run.

    python -m benchmarks.perf_analyzer --perf-analyzer PATH [--model models/cifar10]

perf_analyzer is Triton's own load tool; a user of the protocol measures a server with it.
Installing it on a CPU-only machine, outside this project's venv (it is a C++ binary):

    python3 -m venv /tmp/pa && /tmp/pa/bin/pip install "tritonclient[http]==2.41.1" \\
        nvidia-cuda-runtime-cu12          # the wheel ships bin/perf_analyzer; libcudart.so.12
    sudo apt-get install libb64-0d        # libb64.so.0d
    export LD_LIBRARY_PATH=/tmp/pa/lib/python3.11/site-packages/nvidia/cuda_runtime/lib

The service starts as `python -m app` does by default (HTTP and gRPC), alone, settled. The same
64 CIFAR-10 test images go one per request at concurrency 1, 8 and 64: to perf_analyzer as
UINT8 tensors (HTTP binary data; gRPC raw contents), to wrk as the PNGs a user uploads to
/predict (benchmarks/multipart.lua). The table goes to benchmarks/results/perf_analyzer.md.
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

from benchmarks import run, views

PORT = 8120
GRPC_PORT = 8121
SECONDS = 5
CONCURRENCY = (1, 8, 64)


def input_data(path: Path, count: int = 64) -> Path:
    """perf_analyzer's --input-data: real test images, since an adaptive model's cost depends
    on the image."""
    images = np.load(run.DATA)["x"][:count]
    rows = [{"images": {"content": x.ravel().tolist(), "shape": [32, 32, 3]}} for x in images]
    path.write_text(json.dumps({"data": rows}))
    return path


def measure(
    binary: str, version: int, data: Path, protocol: str, concurrency: int, folder: Path
) -> dict[str, float | None]:
    """One perf_analyzer run over `protocol`: infer/s and latency percentiles in ms."""
    csv = folder / f"{protocol}-c{concurrency}.csv"
    url = f"localhost:{PORT if protocol == 'http' else GRPC_PORT}"
    command = [
        binary, "-m", "cifar10", "-x", str(version), "-u", url, "-i", protocol,
        "--concurrency-range", str(concurrency), "--measurement-interval", str(SECONDS * 1000),
        "--input-data", str(data), "-f", str(csv),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    header, row = csv.read_text().splitlines()[:2]
    values = dict(zip(header.split(","), row.split(","), strict=True))
    return {
        "rate": float(values["Inferences/Second"]),
        **{p: float(values[f"{p} latency"]) / 1000 for p in ("p50", "p90", "p99")},
    }


def ours(listing: Path, concurrency: int) -> dict[str, float | None]:
    """Our own benchmark's load (benchmarks.run: wrk, one PNG per request to /predict)."""
    [row] = run.measure("service", PORT, [("cifar10-png", listing, 1, (concurrency,))], SECONDS)
    return {"rate": row.images_per_s, "p50": row.p50_ms, "p90": None, "p99": row.p99_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--perf-analyzer", default="perf_analyzer", help="the binary")
    parser.add_argument("--model", type=Path, default=run.ROOT / "models" / "cifar10")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFERENCE_", "WORKERS"))}
    env |= {"MODEL_DIR": str(args.model), "PORT": str(PORT), "GRPC_PORT": str(GRPC_PORT)}
    run.ensure_wrk()
    rows: list[tuple[int, str, dict[str, float | None]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = input_data(Path(tmp) / "input.json")
        listing = views.write_pngs(np.load(run.DATA)["x"][:64], Path(tmp))
        server = run.start([sys.executable, "-m", "app"], PORT, env, "/health")
        try:
            run.settle(server)
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health") as reply:
                health = json.load(reply)
            for concurrency in CONCURRENCY:
                for tool in ("http", "grpc", "wrk"):
                    if tool == "wrk":
                        result = ours(listing, concurrency)
                    else:
                        result = measure(
                            args.perf_analyzer, health["version"], data, tool, concurrency,
                            Path(tmp),
                        )  # fmt: skip
                    rows.append((concurrency, tool, result))
                    print(f"c={concurrency} {tool}: {result['rate']:.0f} infer/s", flush=True)
        finally:
            run.stop(server)
    write(rows, health)


TOOLS = {
    "http": "perf_analyzer, HTTP (`-i http`, binary tensor data)",
    "grpc": "perf_analyzer, gRPC (`-i grpc`)",
    "wrk": "our benchmark: wrk, a PNG to `/predict`",
}


def write(rows: list[tuple[int, str, dict[str, float | None]]], health: dict) -> None:
    served = f"`{health['model']}/{health['version']}`, {health['backend']} {health['precision']}"
    lines = [
        "# perf_analyzer against this service (Open Inference Protocol, HTTP and gRPC)",
        "",
        f"`python -m benchmarks.perf_analyzer --perf-analyzer PATH`, "
        f"{dt.date.today().isoformat()}, {os.cpu_count()} CPUs ({run.cpu_model()}; flags: "
        + ", ".join(f"{flag} {'yes' if on else 'no'}" for flag, on in views.cpu_flags().items())
        + "); "
        f"perf_analyzer from tritonclient 2.41.1; served {served} by `python -m app` with "
        "its defaults; one image per request, cycling through 64 CIFAR-10 test images "
        "(perf_analyzer: a 32x32 UINT8 tensor; wrk: its PNG); perf_analyzer's 5 s measurement "
        "windows until stable, wrk 5 s; every row from one run, the server alone.",
        "",
        "| concurrency | load | infer/s | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for concurrency, tool, result in rows:
        cells = [result[p] for p in ("p50", "p90", "p99")]
        lines.append(
            f"| {concurrency} | {TOOLS[tool]} | {result['rate']:,.0f} | "
            + " | ".join("-" if cell is None else f"{cell:.1f}" for cell in cells)
            + " |"
        )
    run.RESULTS.mkdir(parents=True, exist_ok=True)
    (run.RESULTS / "perf_analyzer.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {run.shown(run.RESULTS / 'perf_analyzer.md')}", flush=True)


if __name__ == "__main__":
    main()
