"""Serving benchmark: bare model vs this service vs the naive baseline, in one run.

    python -m benchmarks.run [--duration 10] [--model models/cifar10]

(a) the bare SavedModel signature at batch 1, 32 and 256 (the limit);
(b) this service (`python -m app`) and the naive baseline (benchmarks/naive_service.py), each
    started alone on this machine and driven by wrk at concurrency 1, 8 and 64 with a 32x32 PNG,
    a 640x480 JPEG, a 4000x3000 JPEG, and requests of 16 PNGs;
(c) writes benchmarks/results/serving.{md,csv} and serving_throughput.png, with the ratios.
"""

import argparse
import csv
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from app.model import Classifier, load_classifier

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "cifar10" / "test.npz"
LUA = ROOT / "benchmarks" / "multipart.lua"
CONCURRENCY = (1, 8, 64)
# payload name -> (file to send, images per request)
PAYLOADS = {
    "png32": ("png32.png", 1),
    "jpeg640x480": ("jpeg640x480.jpg", 1),
    "jpeg4000x3000": ("jpeg4000x3000.jpg", 1),
    "png32x16": ("png32.png", 16),
}


@dataclass
class Row:
    service: str
    payload: str
    concurrency: int
    images_per_s: float
    requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


def make_payloads(folder: Path) -> None:
    """A CIFAR-10 test image as a user would send it: as is, and as camera-sized JPEGs."""
    pixels = np.load(DATA)["x"][0] if DATA.exists() else np.full((32, 32, 3), 128, np.uint8)
    image = Image.fromarray(pixels)
    image.save(folder / "png32.png")
    rng = np.random.default_rng(0)
    for width, height in ((640, 480), (4000, 3000)):
        big = np.asarray(image.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
        noisy = np.clip(big + rng.normal(0, 4, big.shape), 0, 255).astype(np.uint8)  # sensor noise
        Image.fromarray(noisy).save(folder / f"jpeg{width}x{height}.jpg", quality=90)


def bare_model(model_dir: Path, seconds: float) -> dict[int, float]:
    """Images/s of the serving signature called directly, per batch size."""
    classifier = load_classifier(model_dir)
    return {batch: bare_rate(classifier, batch, seconds) for batch in (1, 32, 256)}


def bare_rate(classifier: Classifier, batch: int, seconds: float) -> float:
    images = np.zeros((batch, classifier.height, classifier.width, 3), np.uint8)
    classifier.predict(images)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        classifier.predict(images)
        calls += 1
    return calls * batch / (time.perf_counter() - started)


def start(command: list[str], port: int, env: dict[str, str]) -> subprocess.Popen:
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/docs", timeout=2):
                return process
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"{command} exited with {process.returncode}") from None
            time.sleep(0.5)
    raise RuntimeError(f"{command} did not start")


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def ensure_wrk() -> None:
    """Install wrk with the system's apt-get the first time a benchmark needs it."""
    if shutil.which("wrk") is not None:
        return
    apt = shutil.which("apt-get")
    if apt is None:
        sys.exit("wrk is not installed and there is no apt-get here: install wrk, then rerun")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    print("installing wrk with apt-get ...", flush=True)
    subprocess.run([*sudo, apt, "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, apt, "install", "-y", "-qq", "wrk"], check=True, env=env)


def drive(port: int, payload_file: Path, count: int, concurrency: int, seconds: float) -> dict:
    command = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{round(seconds)}s",
        "--timeout",
        "30s",
        "-s",
        str(LUA),
        f"http://127.0.0.1:{port}/predict",
        "--",
        str(payload_file),
        str(count),
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def measure(service: str, port: int, folder: Path, seconds: float) -> list[Row]:
    rows = []
    for payload, (name, count) in PAYLOADS.items():
        drive(port, folder / name, count, 8, 2)  # warm-up, not recorded
        for concurrency in CONCURRENCY:
            stats = drive(port, folder / name, count, concurrency, seconds)
            ok = stats["requests"] - stats["errors"]
            row = Row(
                service,
                payload,
                concurrency,
                images_per_s=ok * count / (stats["duration_us"] / 1e6),
                requests=stats["requests"],
                errors=stats["errors"],
                p50_ms=stats["p50_us"] / 1000,
                p95_ms=stats["p95_us"] / 1000,
                p99_ms=stats["p99_us"] / 1000,
            )
            print(
                f"{service:8s} {payload:14s} c={concurrency:<3d} {row.images_per_s:8.1f} img/s "
                f"p50={row.p50_ms:7.1f} p99={row.p99_ms:7.1f} ms errors={row.errors}",
                flush=True,
            )
            rows.append(row)
    return rows


def write_results(rows: list[Row], bare: dict[int, float], model_dir: Path, seconds: float) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "serving.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)

    def find(service: str, payload: str, concurrency: int) -> Row:
        return next(
            r
            for r in rows
            if (r.service, r.payload, r.concurrency) == (service, payload, concurrency)
        )

    ours, naive = find("service", "png32", 64), find("naive", "png32", 64)
    lines = [
        f"Measured by `python -m benchmarks.run --duration {seconds:g}` on {platform.node()} "
        f"({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}), "
        f"model `{_shown(model_dir)}`, wrk with 1 thread, {seconds:g} s per cell.",
        "",
        "Bare model (serving signature, no HTTP): "
        + ", ".join(f"batch {b}: {v:.0f} images/s" for b, v in bare.items()),
        "",
        "| service | payload | concurrency | images/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.service} | {r.payload} | {r.concurrency} | {r.images_per_s:.1f} | {r.p50_ms:.1f} "
        f"| {r.p95_ms:.1f} | {r.p99_ms:.1f} | {r.errors} |"
        for r in rows
    ]
    lines += [
        "",
        "Ratios (32x32 PNG, one image per request, concurrency 64):",
        f"- service / bare model at batch 256: {ours.images_per_s / bare[256]:.2f}",
        f"- service / naive baseline: {ours.images_per_s / max(naive.images_per_s, 1e-9):.1f}x",
        f"- service p99 at concurrency 1 (32x32 PNG): {find('service', 'png32', 1).p99_ms:.1f} ms",
        "- service p50 at concurrency 1 (4000x3000 JPEG): "
        f"{find('service', 'jpeg4000x3000', 1).p50_ms:.1f} ms",
        f"- errors in service runs: {sum(r.errors for r in rows if r.service == 'service')}",
    ]
    (RESULTS / "serving.md").write_text("\n".join(lines) + "\n")
    plot(rows, bare)


def _shown(path: Path) -> Path:
    """The path relative to the repository when it is inside it, so results name no home."""
    return path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path


def plot(rows: list[Row], bare: dict[int, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PAYLOADS), figsize=(4 * len(PAYLOADS), 3.6), sharey=False)
    for axis, payload in zip(axes, PAYLOADS, strict=True):
        for service, style in (("service", "o-"), ("naive", "s--")):
            points = [
                (r.concurrency, r.images_per_s)
                for r in rows
                if r.service == service and r.payload == payload
            ]
            axis.plot(*zip(*points, strict=True), style, label=service)
        axis.axhline(bare[256], color="grey", linestyle=":", label="bare model, batch 256")
        axis.set(title=payload, xlabel="concurrency", xscale="log", yscale="log")
        axis.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
    axes[0].set_ylabel("images/s")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "serving_throughput.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "cifar10")
    parser.add_argument("--only", choices=("service", "naive"), help="skip the other service")
    args = parser.parse_args()
    ensure_wrk()

    env = os.environ | {"MODEL_DIR": str(args.model), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_payloads(folder)
        print("bare model ...", flush=True)
        bare = bare_model(args.model, seconds=min(args.duration, 5))
        print({k: round(v) for k, v in bare.items()}, flush=True)
        rows: list[Row] = []
        services = {
            "service": ([sys.executable, "-m", "app"], {"PORT": "8101", "LOG_LEVEL": "warning"}),
            "naive": (
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "benchmarks.naive_service:app",
                    "--port",
                    "8102",
                    "--log-level",
                    "warning",
                ],
                {},
            ),
        }
        for service, (command, extra_env) in services.items():
            if args.only and service != args.only:
                continue
            port = int(extra_env.get("PORT", "8102"))
            process = start(command, port, env | extra_env)
            try:
                rows += measure(service, port, folder, args.duration)
            finally:
                stop(process)
    if not args.only:
        write_results(rows, bare, args.model, args.duration)


if __name__ == "__main__":
    main()
