"""Serving benchmark: bare model vs this service vs the naive baseline and peers, in one run.

    python -m benchmarks.run [--duration 10] [--model models/cifar10] [--peers litserve,bentoml]
                             [--payloads png32,...] [--out benchmarks/results]

(a) the bare model, no HTTP, at batch 1, 32 and 256 (the limit), on each installed backend
    (the one `auto` picks first);
(b) this service as it starts by default (`python -m app`: a process per CPU, the backend `auto`
    picks), the same service as round 1 ran it (`single`: WORKERS=1, INFERENCE_BACKEND=tensorflow),
    the naive baseline (benchmarks/naive_service.py) and the peers LitServe and BentoML serving the
    same SavedModel (benchmarks/peers/, each from its own venv, made on first use), each started
    alone on this machine, left until every process of it has loaded, and driven by wrk at
    concurrency 1, 8 and 64 with a 32x32 PNG, a 640x480 JPEG, a 4000x3000 JPEG, and requests of
    16 PNGs;
(c) writes serving.{md,csv} and serving_throughput.png (in benchmarks/results/ unless --out says
    otherwise), with the ratios.
"""

import argparse
import contextlib
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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from app.backends import installed, resolve_backend
from app.model import Classifier, load_classifier
from benchmarks import peers

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
    """One wrk run against one server."""

    service: str
    payload: str
    concurrency: int
    images_per_s: float
    requests: int
    errors: int  # non-2xx answers and socket errors (connect, read, write, timeout)
    p50_ms: float
    p95_ms: float
    p99_ms: float
    non2xx: int = 0


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


def bare_model(model_dir: Path, seconds: float) -> dict[str, dict[int, float]]:
    """Images/s of the model called directly, per backend ("openvino f32") and batch size."""
    rates: dict[str, dict[int, float]] = {}
    for backend in backends_here():
        classifier = load_classifier(model_dir, backend=backend)
        name = f"{classifier.backend} {classifier.precision}"
        rates[name] = {batch: bare_rate(classifier, batch, seconds) for batch in (1, 32, 256)}
    return rates


def backends_here() -> list[str]:
    """The installed runtimes, the one INFERENCE_BACKEND=auto picks first."""
    chosen = resolve_backend("auto")
    return [chosen, *(b for b in ("openvino", "tensorflow") if b != chosen and installed(b))]


def bare_rate(classifier: Classifier, batch: int, seconds: float) -> float:
    images = np.zeros((batch, classifier.height, classifier.width, 3), np.uint8)
    classifier.predict(images)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        classifier.predict(images)
        calls += 1
    return calls * batch / (time.perf_counter() - started)


def start(
    command: list[str],
    port: int,
    env: dict[str, str],
    ready_path: str = "/docs",
    log: Path | None = None,
) -> subprocess.Popen:
    """Start a server in its own process group; return once `ready_path` answers 200.

    Its output goes to `log` when given (a failed start then names it), else nowhere."""
    with open(log or os.devnull, "wb") as output:  # the child keeps its own copy
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    seen = f" (output: {log})" if log else ""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=2):
                return process
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"{command} exited with {process.returncode}{seen}") from None
            time.sleep(0.5)
    stop(process)
    raise RuntimeError(f"{command} did not answer {ready_path} within 180 s{seen}")


def settle(process: subprocess.Popen, idle_cpu_s: float = 0.05, limit_s: float = 180) -> None:
    """Wait until the server's process group is idle for a second: every worker has loaded."""
    tick = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + limit_s
    before = _group_cpu_ticks(process.pid)
    while time.monotonic() < deadline:
        time.sleep(1)
        now = _group_cpu_ticks(process.pid)
        if (now - before) / tick < idle_cpu_s:
            return
        before = now
    raise RuntimeError(f"server group {process.pid} still busy after {limit_s:.0f} s")


def _group_cpu_ticks(group: int) -> int:
    """User + system CPU ticks of the live processes in a process group."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # the command name (field 2) may hold spaces: split after its closing bracket
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group:  # field 5, pgrp
                total += int(fields[11]) + int(fields[12])  # fields 14 and 15, utime + stime
    return total


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the whole process group (servers with worker processes), SIGKILL after 30 s."""
    os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until its workers, not only the parent, are gone
        process.poll()  # reaps the parent: a zombie would keep the group alive
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


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


def drive(
    port: int, payload: Path, count: int, concurrency: int, seconds: float, query: str = ""
) -> dict:
    """One wrk run against /predict`query`: `count` images per request, of `payload` (an image,
    or a `.list` of them to cycle through: benchmarks/multipart.lua)."""
    command = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(LUA),
        f"http://127.0.0.1:{port}/predict{query}",
        "--",
        str(payload),
        str(count),
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def measure(
    service: str,
    port: int,
    jobs: list[tuple[str, Path, int, tuple[int, ...]]],
    seconds: float,
    query: str = "",
) -> list[Row]:
    """Drive one running server: per job (payload name, file or .list, images per request,
    concurrencies) a short warm-up, then one wrk run per concurrency."""
    rows = []
    for payload, path, count, concurrencies in jobs:
        if concurrencies:
            drive(port, path, count, 8, 2, query)  # warm-up, not recorded
        for concurrency in concurrencies:
            stats = drive(port, path, count, concurrency, seconds, query)
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
                non2xx=stats["non2xx"],
            )
            print(
                f"{service:8s} {payload:14s} c={concurrency:<3d} {row.images_per_s:8.1f} img/s "
                f"p50={row.p50_ms:7.1f} p99={row.p99_ms:7.1f} ms errors={row.errors}",
                flush=True,
            )
            rows.append(row)
    return rows


def write_results(
    rows: list[Row],
    bare: dict[str, dict[int, float]],
    model_dir: Path,
    seconds: float,
    folder: Path,
    skipped: dict[str, str],
    setups: dict[str, str],
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "serving.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)

    def find(service: str, payload: str, concurrency: int) -> Row | None:
        return next(
            (
                r
                for r in rows
                if (r.service, r.payload, r.concurrency) == (service, payload, concurrency)
            ),
            None,
        )

    measured_peers = [name for name in peers.PEERS if any(r.service == name for r in rows)]
    lines = [
        f"Measured by `python -m benchmarks.run {' '.join(sys.argv[1:])}` on {platform.node()} "
        f"({os.cpu_count()} CPUs, {cpu_model()}), "
        f"model `{shown(model_dir)}`, wrk with 1 thread, {seconds:g} s per cell.",
        "",
        *(
            f"Bare model, {name}, no HTTP: "
            + ", ".join(f"batch {b}: {v:.0f} images/s" for b, v in rates.items())
            for name, rates in bare.items()
        ),
        "",
        *side_by_side(rows),
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
        f"`service` is `python -m app` as it starts by default here: {os.cpu_count()} "
        f"processes (WORKERS = the CPUs), {setups.get('service', '?')}; `single` is the same "
        f"code as round 1 ran it: WORKERS=1, INFERENCE_BACKEND=tensorflow "
        f"({setups.get('single', '?')}).",
        "",
        "Ratios (32x32 PNG, one image per request, concurrency 64):",
    ]
    if ours := find("service", "png32", 64):
        name, rates = next(iter(bare.items()))
        lines.append(
            f"- service / bare model ({name}) at batch 256: {ours.images_per_s / rates[256]:.2f}"
        )
        if naive := find("naive", "png32", 64):
            ratio = ours.images_per_s / max(naive.images_per_s, 1e-9)
            lines.append(f"- service / naive baseline: {ratio:.1f}x")
        for name in measured_peers:
            if peer := find(name, "png32", 64):
                ratio = ours.images_per_s / max(peer.images_per_s, 1e-9)
                lines.append(f"- service / {name}: {ratio:.2f}x")
    if row := find("service", "png32", 1):
        lines.append(f"- service p99 at concurrency 1 (32x32 PNG): {row.p99_ms:.1f} ms")
    if row := find("service", "jpeg4000x3000", 1):
        lines.append(f"- service p50 at concurrency 1 (4000x3000 JPEG): {row.p50_ms:.1f} ms")
    for concurrency in CONCURRENCY:
        if row := find("service", "png32", concurrency):
            lines.append(
                f"- service p99 / p50 at concurrency {concurrency} (32x32 PNG): "
                f"{row.p99_ms / max(row.p50_ms, 1e-9):.1f}"
            )
    ours = ("service", "single")
    lines.append(
        f"- errors in service and single runs: {sum(r.errors for r in rows if r.service in ours)}"
    )
    others = ("single", *measured_peers)
    compared = [name for name in others if any(r.service == name for r in rows)]
    lines += peer_lines(rows, compared, skipped, find)
    (folder / "serving.md").write_text("\n".join(lines) + "\n")
    plot(rows, bare, folder)


def side_by_side(rows: list[Row]) -> list[str]:
    """Images/s of every server per payload and concurrency, one column each."""
    servers = list(dict.fromkeys(r.service for r in rows))
    cells = {(r.service, r.payload, r.concurrency): r for r in rows}
    lines = [
        "Images/s (p99 ms), side by side:",
        "",
        "| payload | concurrency | " + " | ".join(servers) + " |",
        "|---|---|" + "---|" * len(servers),
    ]
    for payload in dict.fromkeys(r.payload for r in rows):
        for concurrency in CONCURRENCY:
            shown = [
                f"{c.images_per_s:.0f} ({c.p99_ms:.0f})"
                if (c := cells.get((server, payload, concurrency)))
                else "-"
                for server in servers
            ]
            lines.append(f"| {payload} | {concurrency} | " + " | ".join(shown) + " |")
    return lines


def peer_lines(
    rows: list[Row],
    measured: list[str],
    skipped: dict[str, str],
    find: Callable[[str, str, int], Row | None],
) -> list[str]:
    """This service / each other server, images/s at the same payload and concurrency."""
    lines = []
    if measured:
        pins = ", ".join(peers.PEERS[n].requirements[0] for n in measured if n in peers.PEERS)
        lines += [
            "",
            "This service / the others, images/s at the same payload and concurrency (peers: "
            f"{pins or 'none'}, configured as benchmarks/peers/ says):",
            "",
            "| payload | concurrency | " + " | ".join(f"service / {n}" for n in measured) + " |",
            "|---|---|" + "---|" * len(measured),
        ]
        for row in rows:
            if row.service != "service":
                continue
            cells = []
            for name in measured:
                peer = find(name, row.payload, row.concurrency)
                ok = peer is not None and peer.images_per_s > 0
                cells.append(f"{row.images_per_s / peer.images_per_s:.2f}" if ok else "-")
            lines.append(f"| {row.payload} | {row.concurrency} | " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", *(f"- {name}: skipped ({reason})" for name, reason in skipped.items())]
    return lines


def served_as(port: int) -> str:
    """How a running instance of this service computes: backend and precision, from /health."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
        health = json.load(response)
    return f"{health['backend']} {health['precision']}"


def cpu_model() -> str:
    """The CPU's model name as Linux reports it, for the results to name the machine."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def shown(path: Path) -> Path:
    """The path relative to the repository when it is inside it, so results name no home."""
    return path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path


def plot(rows: list[Row], bare: dict[str, dict[int, float]], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    payloads = [p for p in PAYLOADS if any(r.payload == p for r in rows)]
    fig, axes = plt.subplots(
        1, len(payloads), figsize=(4 * len(payloads), 3.6), sharey=False, squeeze=False
    )
    styles = {"service": "o-", "single": "D-", "naive": "s--", "litserve": "^-.", "bentoml": "v:"}
    for axis, payload in zip(axes[0], payloads, strict=True):
        for service, style in styles.items():
            points = [
                (r.concurrency, r.images_per_s)
                for r in rows
                if r.service == service and r.payload == payload
            ]
            if points:
                axis.plot(*zip(*points, strict=True), style, label=service)
        for (name, rates), shade in zip(bare.items(), ("grey", "silver"), strict=False):
            axis.axhline(rates[256], color=shade, linestyle=":", label=f"bare {name}, batch 256")
        axis.set(title=payload, xlabel="concurrency", xscale="log", yscale="log")
        axis.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
    axes[0][0].set_ylabel("images/s")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "serving_throughput.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "cifar10")
    parser.add_argument(
        "--only",
        choices=("service", "single", "naive", *peers.PEERS),
        help="measure this one alone and write no results",
    )
    peers.add_argument(parser)
    parser.add_argument(
        "--payloads",
        type=parse_payloads,
        default=list(PAYLOADS),
        help=f"payloads, comma-separated (default: all: {','.join(PAYLOADS)})",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="folder for serving.{md,csv} and the plot"
    )
    args = parser.parse_args()
    wanted = ["service", "single", "naive", *args.peers] if args.only is None else [args.only]
    ensure_wrk()

    # Peers first: a venv made on first use takes minutes, and one that fails is only skipped.
    launches: dict[str, tuple[list[str], dict[str, str]]] = {}
    skipped: dict[str, str] = {}
    for name in (n for n in wanted if n in peers.PEERS):
        try:
            launches[name] = peers.launch(peers.PEERS[name], args.model)
        except peers.PeerUnavailable as exc:
            skipped[name] = str(exc)
            print(f"{name}: skipped ({exc})", flush=True)

    env = os.environ | {"MODEL_DIR": str(args.model), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_payloads(folder)
        print("bare model ...", flush=True)
        bare = bare_model(args.model, seconds=min(args.duration, 5))
        print({name: {b: round(v) for b, v in r.items()} for name, r in bare.items()}, flush=True)
        rows: list[Row] = []
        setups: dict[str, str] = {}  # this service's instances: backend and precision
        # name -> (command, extra environment, port, path that answers once it serves)
        services = {
            "service": (
                [sys.executable, "-m", "app"],
                {"PORT": "8101", "LOG_LEVEL": "warning"},
                8101,
                "/docs",
            ),
            "single": (
                [sys.executable, "-m", "app"],
                {
                    "PORT": "8105",
                    "LOG_LEVEL": "warning",
                    "WORKERS": "1",
                    "INFERENCE_BACKEND": "tensorflow",
                },
                8105,
                "/docs",
            ),
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
                8102,
                "/docs",
            ),
        }
        for name, (command, extra_env) in launches.items():
            services[name] = (
                command,
                extra_env,
                peers.PEERS[name].port,
                peers.PEERS[name].ready_path,
            )
        for service, (command, extra_env, port, ready_path) in services.items():
            if service not in wanted:
                continue
            try:
                log = peers.CACHE / f"{service}.log" if service in peers.PEERS else None
                process = start(command, port, env | extra_env, ready_path, log)
            except RuntimeError as exc:
                if service not in peers.PEERS:
                    raise
                skipped[service] = str(exc)
                print(f"{service}: skipped ({exc})", flush=True)
                continue
            try:
                if service in ("service", "single"):
                    # /docs answers once the first process serves; the others load after it.
                    # (The peers' ready paths wait for all their workers.)
                    settle(process)
                    setups[service] = served_as(port)
                jobs = [
                    (payload, folder / PAYLOADS[payload][0], PAYLOADS[payload][1], CONCURRENCY)
                    for payload in args.payloads
                ]
                rows += measure(service, port, jobs, args.duration)
            finally:
                stop(process)
    if not args.only:
        write_results(rows, bare, args.model, args.duration, args.out, skipped, setups)


def parse_payloads(value: str) -> list[str]:
    """`--payloads png32,png32x16`: a subset of PAYLOADS, in its order."""
    names = {name.strip() for name in value.split(",") if name.strip()}
    unknown = sorted(names - PAYLOADS.keys())
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown payload {', '.join(unknown) or '(none)'}; known: {', '.join(PAYLOADS)}"
        )
    return [name for name in PAYLOADS if name in names]


if __name__ == "__main__":
    main()
