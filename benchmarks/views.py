"""Adaptive test-time views: what each serving configuration trades between accuracy and speed.

    python -m benchmarks.views [--duration 10] [--configs v2-f32,v3-default,...]
                               [--peers litserve,bentoml] [--multi-concurrency 1,8,64]
                               [--test-images 10000] [--models models] [--out benchmarks/results]

Each configuration in CONFIGS (model version x INFERENCE_PRECISION x `?views=` policy), alone:
(a) test accuracy and ECE (15 bins) on the CIFAR-10 test images through the app's openvino
    backend in that precision and views policy, in batches of 256;
(b) network passes per image: for a version with adaptive views, 1 + (views - 1) x the share of
    test images whose one-view confidence is below the policy's threshold; else its fixed views;
(c) the bare model's images/s at batch 1, 32 and 256 on real test images: an adaptive graph
    costs what the images make it cost (blank images would all take one path);
(d) the service (`python -m app`, default workers, the configuration's environment and
    `?views=`), started alone, settled, driven by wrk at concurrency 1, 8 and 64 with one 32x32 PNG
    per request and with 16, the requests cycling through the first 512 test images
    (benchmarks/multipart.lua), then stopped.
A configuration whose version folder is missing, or whose precisions this CPU cannot serve or
the version's golden check refuses, is skipped with a note (one refused falls to the next).
Then LitServe and BentoML serve cifar10/2's SavedModel as their users would (TensorFlow float32,
benchmarks/peers/) and are driven the same way; their accuracy is that SavedModel's through
TensorFlow float32. Writes views.md, views.csv and views_pareto.png (service images/s at
concurrency 64 against test accuracy) in benchmarks/results/ unless --out says otherwise.
"""

import argparse
import contextlib
import csv
import datetime as dt
import json
import os
import platform
import shlex
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from app.backends import installed
from app.contract import ModelLoadError
from app.model import Classifier, load_classifier
from app.settings import Settings
from benchmarks import peers
from benchmarks.run import (
    CONCURRENCY,
    DATA,
    RESULTS,
    ROOT,
    Row,
    cpu_model,
    ensure_wrk,
    measure,
    served_as,
    settle,
    shown,
    start,
    stop,
)
from training.calibration import ECE_BINS, expected_calibration_error
from training.quantize import MEASURE_BATCH, answers, servable_precisions
from training.views import passes as adaptive_passes

PORT = 8110  # this service's port, one configuration at a time
BARE_BATCHES = (1, 32, 256)  # batch sizes of the bare model's rates
CYCLED_IMAGES = 512  # distinct test images the wrk requests cycle through
PAYLOADS = {"png32": 1, "png32x16": 16}  # payload -> 32x32 PNGs per request
PEER_MODEL = "cifar10/2"  # what LitServe and BentoML serve, under --models
# The CPU flags that decide what bf16 and int8 cost here (amx: any of amx_tile/bf16/int8).
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx")


@dataclass(frozen=True)
class Config:
    """One served configuration: a model version, INFERENCE_PRECISION and a `?views=` policy."""

    key: str  # its name for --configs and in views.csv
    version: str  # the version folder under --models
    precisions: tuple[str, ...] | None  # INFERENCE_PRECISION: the first servable; None: unset
    views: str | None  # `?views=` sent with every request; None: none (the service's default)


CONFIGS = (
    Config("v2-f32", "cifar10/2", ("f32",), None),
    Config("v2-auto", "cifar10/2", ("auto",), None),
    Config("v3-f32", "cifar10/3", ("f32",), "auto"),
    Config("v3-bf16", "cifar10/3", ("bf16",), "auto"),  # where this CPU computes bf16
    Config("v3-int8", "cifar10/3", ("int8",), "auto"),  # where it computes int8 and it exists
    Config("v3-default", "cifar10/3", None, None),  # the new default: nothing set or asked
    Config("v3-one", "cifar10/3", ("int8", "auto"), "one"),
    Config("v3-all", "cifar10/3", ("int8", "auto"), "all"),
)
NEW_DEFAULT = "v3-default"
OLD_DEFAULT = "v2-f32"  # what the ratios compare the new default with


class Unservable(ValueError):
    """A configuration this CPU, or this version folder, cannot serve; the message says why."""


@dataclass
class Measured:
    """A configuration's model figures, parts (a) to (c); peers have no bare rates."""

    key: str
    label: str
    served: str  # runtime and precision, e.g. "openvino int8"
    views: str  # the policy asked: auto, one, all; "default"; "fixed" (no adaptive views)
    views_below: float | None  # the one-view confidence below which every view runs
    test_accuracy: float
    ece: float
    passes_per_image: float
    bare: dict[int, float]  # batch size -> images/s


def precision_choices(config: Config, servable: list[str]) -> list[str | None]:
    """INFERENCE_PRECISION values to try for `config`, in its order: those servable here
    ([None]: left unset). A choice refused at load (its golden check) falls to the next."""
    if config.precisions is None:
        return [None]
    choices: list[str | None] = [p for p in config.precisions if p == "auto" or p in servable]
    if not choices:
        raise Unservable(
            f"{' or '.join(config.precisions)} not servable here (this CPU and version: "
            f"{', '.join(servable)})"
        )
    return choices


def label(config: Config, precision: str | None) -> str:
    """How tables and the plot name a configuration: version, precision asked, views asked."""
    if precision is None and config.views is None:
        return f"{config.version} new default"
    views = f" views={config.views}" if config.views else ""
    return f"{config.version} {precision or 'default'}{views}"


def all_views(metadata: dict) -> int:
    """The network passes one image costs with every view: the version's own record."""
    serving = metadata.get("serving", {})
    every = serving.get("views", {}).get("passes", {}).get("all")
    return int(every or serving.get("forward_passes_per_image", 1))


def per_image(views_below: float | None, count: int) -> np.ndarray | None:
    """The `views_below` array `Classifier.predict` takes; None: the version's own threshold."""
    return None if views_below is None else np.full(count, views_below, np.float32)


def bare_rate(
    classifier: Classifier,
    images: np.ndarray,
    batch: int,
    views_below: float | None,
    seconds: float,
) -> float:
    """Images/s of back-to-back calls on consecutive slices of real images (never the same one
    twice in a row), unlike benchmarks.run.bare_rate's blank images."""
    batches = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)]
    below = per_image(views_below, batch)
    classifier.predict(batches[-1], below)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        classifier.predict(batches[calls % len(batches)], below)
        calls += 1
    return calls * batch / (time.perf_counter() - started)


def measure_model(
    config: Config,
    version_dir: Path,
    precision: str | None,
    test: tuple[np.ndarray, np.ndarray],
    bare_images: np.ndarray,
    seconds: float,
) -> Measured:
    """Parts (a) to (c) in this process, the model loaded as the service loads it."""
    classifier = load_classifier(version_dir, backend="openvino", precision=precision or "auto")
    adaptive = classifier.adaptive
    # None: what a request that asks nothing gets (the version's own threshold).
    asked = classifier.views_below(config.views) if adaptive and config.views else None
    threshold = classifier.views_below("auto") if adaptive and asked is None else asked
    x, y = test
    probabilities = answers(classifier, x, asked)
    if adaptive:
        one_view = answers(classifier, x, 0.0).max(axis=1)
        passes = adaptive_passes(one_view, threshold, all_views(classifier.metadata))
    else:
        passes = float(all_views(classifier.metadata))
    rates = {b: bare_rate(classifier, bare_images, b, asked, seconds) for b in BARE_BATCHES}
    return Measured(
        key=config.key,
        label=label(config, precision),
        served=f"{classifier.backend} {classifier.precision}",
        views=(config.views or "default") if adaptive else "fixed",
        views_below=threshold,
        test_accuracy=float(np.mean(probabilities.argmax(axis=1) == y)),
        ece=expected_calibration_error(probabilities, y, ECE_BINS),
        passes_per_image=passes,
        bare=rates,
    )


def measure_peer_model(version_dir: Path, test: tuple[np.ndarray, np.ndarray]) -> Measured:
    """The peers' accuracy: the SavedModel through TensorFlow float32, which is what they run."""
    classifier = load_classifier(version_dir, backend="tensorflow")
    x, y = test
    probabilities = answers(classifier, x, None)
    return Measured(
        key="peers",
        label="peers",
        served="tensorflow f32",
        views="fixed",
        views_below=None,
        test_accuracy=float(np.mean(probabilities.argmax(axis=1) == y)),
        ece=expected_calibration_error(probabilities, y, ECE_BINS),
        passes_per_image=float(all_views(classifier.metadata)),
        bare={},
    )


def write_pngs(images: np.ndarray, folder: Path) -> Path:
    """Each image as the PNG a user would upload, and the list of them the wrk script reads."""
    paths = []
    for index, pixels in enumerate(images):
        path = folder / f"test{index:05d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    listing = folder / "images.list"  # benchmarks/multipart.lua cycles through it
    listing.write_text("".join(f"{path}\n" for path in paths))
    return listing


def service_env(version_dir: Path, precision: str | None) -> dict[str, str]:
    """`python -m app`'s environment as it starts by default (no setting inherited from this
    shell), serving `version_dir` alone; INFERENCE_* only where the configuration sets them."""
    settings = {name.upper() for name in Settings.model_fields}
    env = {name: value for name, value in os.environ.items() if name.upper() not in settings}
    env |= {
        "MODEL_DIR": str(version_dir),
        "PORT": str(PORT),
        "LOG_LEVEL": "warning",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    if precision is not None:
        env |= {"INFERENCE_BACKEND": "openvino", "INFERENCE_PRECISION": precision}
    return env


def views_answered(port: int, query: str, image: Path) -> str:
    """The `views` one request is answered with: proof that `?views=` reached the model."""
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{image.name}"'
        f"\r\nContent-Type: image/png\r\n\r\n".encode()
        + image.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict{query}",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(json.load(response).get("views", "?"))


def measure_service(
    name: str,
    port: int,
    query: str,
    listing: Path,
    seconds: float,
    plan: dict[str, tuple[int, ...]],
) -> list[Row]:
    """Part (d) for one running server: every payload at every concurrency it is planned for."""
    jobs = [(payload, listing, PAYLOADS[payload], plan[payload]) for payload in plan]
    return measure(name, port, jobs, seconds, query)


def serve(
    name: str,
    launch: tuple[list[str], dict[str, str], int, str],
    query: str,
    listing: Path,
    seconds: float,
    plan: dict[str, tuple[int, ...]],
    ours: bool,
) -> tuple[list[Row], str]:
    """Start one server alone (command, environment, port, path answering once it serves),
    wait until every process of it has loaded, drive it, stop it. Returns its rows and a note:
    for this service, how /health and one answer say it serves."""
    command, env, port, ready_path = launch
    log = peers.CACHE / "views" / f"{name.replace('/', '-').replace(' ', '_')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    process = start(command, port, env, ready_path, log)
    try:
        how = ""
        try:
            settle(process)
        except RuntimeError as exc:
            if ours:
                raise
            # A peer's ready path already waits for its workers (benchmarks.run does not
            # settle peers): a framework busy while idle is driven anyway, and says so.
            how = f"never idle before driving ({exc})"
        if ours:
            first = Path(listing.read_text().splitlines()[0])
            how = f"{served_as(port)}, answers views={views_answered(port, query, first)}"
        if how:
            print(f"  {how}", flush=True)
        return measure_service(name, port, query, listing, seconds, plan), how
    finally:
        stop(process)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indexes of the points no other point beats on both speed (x) and accuracy (y), fastest
    first."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for index in order:
        if points[index][1] > best:
            front.append(index)
            best = points[index][1]
    return front


def cpu_flags() -> dict[str, bool]:
    """Which of FLAGS /proc/cpuinfo lists for this CPU."""
    present: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                break
    return {
        flag: any(p.startswith("amx_") for p in present) if flag == "amx" else flag in present
        for flag in FLAGS
    }


def write_results(
    measured: list[Measured],
    rows: list[Row],
    hows: dict[str, str],
    skipped: dict[str, str],
    test_images: int,
    seconds: float,
    folder: Path,
) -> None:
    """views.md, views.csv and views_pareto.png in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(measured, rows, folder / "views.csv")
    ours = [m for m in measured if m.key not in peers.PEERS]
    theirs = [m for m in measured if m.key in peers.PEERS]
    flags = ", ".join(f"{flag} {'yes' if on else 'no'}" for flag, on in cpu_flags().items())
    command = shlex.join(["python", "-m", "benchmarks.views", *sys.argv[1:]])
    scored = "the 10,000" if test_images == 10_000 else f"the first {test_images:,} of the"
    lines = [
        "# Adaptive test-time views: accuracy against speed per serving configuration",
        "",
        f"`{command}`, {dt.date.today().isoformat()}, "
        f"on {platform.node()}: {os.cpu_count()} CPUs, {cpu_model()}; flags: {flags}. "
        f"wrk with 1 thread, {seconds:g} s per cell, requests cycling through the first "
        f"{CYCLED_IMAGES} test images as 32x32 PNGs. Every server ran alone, settled first. "
        "Rates are one run on this machine: compare them within this run.",
        "",
        f"## Accuracy and network passes on {scored} CIFAR-10 test images",
        "",
        "| configuration | served as | views | views below | test accuracy | ECE | passes/image |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {m.label} | {m.served} | {m.views} | {shown_threshold(m.views_below)} "
        f"| {m.test_accuracy:.2%} | {m.ece:.2%} | {m.passes_per_image:.2f} |"
        for m in measured
    ]
    lines += [
        "",
        f"Through the app's openvino backend in batches of {MEASURE_BATCH}; ECE in {ECE_BINS} "
        "bins. `views below`: the one-view confidence under which an image gets every view "
        "(`default`: what a request asking nothing gets). Passes per image: 1 + (views - 1) x "
        "the share of test images whose one-view confidence is below it, for a version with "
        "adaptive views; its fixed views otherwise."
        + (
            f" {', '.join(m.label for m in theirs)}: {PEER_MODEL}'s SavedModel through "
            "TensorFlow float32, what they serve, scored in this process, not through them."
            if theirs
            else ""
        ),
        "",
        "## Bare model, no HTTP: images/s on real test images",
        "",
        "| configuration | served as | " + " | ".join(f"batch {b}" for b in BARE_BATCHES) + " |",
        "|---|---|" + "---|" * len(BARE_BATCHES),
    ]
    lines += [
        f"| {m.label} | {m.served} | "
        + " | ".join(f"{m.bare[b]:,.0f}" for b in BARE_BATCHES)
        + " |"
        for m in ours
    ]
    lines += [
        "",
        "## The service (`python -m app`, default workers): images/s (p50 / p99 ms)",
        "",
        *service_table(rows, [m.label for m in ours]),
        "",
        *(f"- {m.label}: {hows[m.label]}" for m in ours if m.label in hows),
    ]
    if theirs:
        pins = ", ".join(peers.PEERS[m.key].requirements[0] for m in theirs)
        lines += [
            "",
            f"## Peers serving {PEER_MODEL} (TensorFlow float32; {pins}): images/s (p50 / p99 ms)",
            "",
            *service_table(rows, [m.label for m in theirs]),
        ]
        if notes := [f"- {m.label}: {hows[m.label]}" for m in theirs if m.label in hows]:
            lines += ["", *notes]
    lines += ["", "## Ratios", "", *ratio_lines(measured, rows)]
    if skipped:
        lines += ["", "## Skipped", "", *(f"- {name}: {why}" for name, why in skipped.items())]
    (folder / "views.md").write_text("\n".join(lines) + "\n")
    plot(measured, rows, folder / "views_pareto.png")


def shown_threshold(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def service_table(rows: list[Row], names: list[str]) -> list[str]:
    """One line per server, one column per payload and concurrency measured, errors last."""
    cells = {(r.service, r.payload, r.concurrency): r for r in rows if r.service in names}
    columns = list(dict.fromkeys((payload, c) for _, payload, c in cells))
    lines = [
        "| server | " + " | ".join(f"{p} c={c}" for p, c in columns) + " | errors |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for name in names:
        shown_cells = [
            f"{r.images_per_s:,.0f} ({r.p50_ms:.1f} / {r.p99_ms:.1f})"
            if (r := cells.get((name, p, c)))
            else "-"
            for p, c in columns
        ]
        errors = sum(r.errors for r in rows if r.service == name)
        lines.append(f"| {name} | " + " | ".join(shown_cells) + f" | {errors} |")
    return lines


def ratio_lines(measured: list[Measured], rows: list[Row]) -> list[str]:
    """The new default against cifar10/2 f32 and the peers; its tails; the errors."""
    labels = {m.key: m.label for m in measured}

    def cell(key: str, payload: str, concurrency: int) -> Row | None:
        wanted = (labels.get(key), payload, concurrency)
        return next((r for r in rows if (r.service, r.payload, r.concurrency) == wanted), None)

    lines = []
    new = cell(NEW_DEFAULT, "png32", 64)
    if new is None:
        lines.append(f"- the new default ({NEW_DEFAULT}) was not measured: no ratios")
    else:
        for key in (OLD_DEFAULT, *peers.PEERS):
            if (other := cell(key, "png32", 64)) and other.images_per_s > 0:
                lines.append(
                    f"- images/s at concurrency 64, single PNG, {labels[NEW_DEFAULT]} / "
                    f"{labels[key]}: {new.images_per_s / other.images_per_s:.2f}x"
                )
        for concurrency in (8, 64):
            if row := cell(NEW_DEFAULT, "png32", concurrency):
                lines.append(
                    f"- p99 / p50 of {labels[NEW_DEFAULT]} at concurrency {concurrency}, single "
                    f"PNG: {row.p99_ms / max(row.p50_ms, 1e-9):.1f}"
                )
    peer_labels = {labels[k] for k in peers.PEERS if k in labels}
    lines += [
        f"- errors (non-2xx and socket), this service, every configuration: "
        f"{sum(r.errors for r in rows if r.service not in peer_labels)}",
        f"- errors, peers: {sum(r.errors for r in rows if r.service in peer_labels)}",
    ]
    return lines


def write_csv(measured: list[Measured], rows: list[Row], path: Path) -> None:
    """One line per server, payload and concurrency, beside the configuration's model figures
    (a configuration never served has one line, without them)."""
    lines = []
    for m in measured:
        model = {k: v for k, v in asdict(m).items() if k != "bare"}
        model |= {
            f"bare_img_s_batch_{b}": round(m.bare[b], 1) if b in m.bare else ""
            for b in BARE_BATCHES
        }
        model |= {
            "test_accuracy": round(m.test_accuracy, 4),
            "ece": round(m.ece, 4),
            "passes_per_image": round(m.passes_per_image, 3),
        }
        served = [
            asdict(r) | {"images_per_s": round(r.images_per_s, 1)}
            for r in rows
            if r.service == m.label
        ]
        lines += [model | {k: v for k, v in r.items() if k != "config"} for r in served] or [model]
    fields = list(dict.fromkeys(name for line in lines for name in line))
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(lines)


def plot(measured: list[Measured], rows: list[Row], path: Path) -> None:
    """Service images/s at concurrency 64 (single PNG) against test accuracy, one labelled
    point per configuration and peer; the line joins the ones nothing beats on both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed = {r.service: r.images_per_s for r in rows if (r.payload, r.concurrency) == ("png32", 64)}
    shown_models = [m for m in measured if m.label in speed]
    points = [(speed[m.label], 100 * m.test_accuracy) for m in shown_models]
    fig, axis = plt.subplots(figsize=(7.5, 5))
    by_speed = sorted(zip(shown_models, points, strict=True), key=lambda pair: pair[1])
    for rank, (m, (x, y)) in enumerate(by_speed):
        peer = m.key in peers.PEERS
        axis.plot(x, y, "^" if peer else "o", color="tab:grey" if peer else "tab:blue")
        # Above and below in turn: neighbours in speed often sit within 0.1 point of accuracy.
        offset = (5, 5) if rank % 2 == 0 else (5, -11)
        axis.annotate(m.label, (x, y), textcoords="offset points", xytext=offset, fontsize=8)
    if len(front := pareto_front(points)) > 1:
        line = zip(*sorted(points[i] for i in front), strict=True)
        axis.plot(*line, "--", color="tab:orange", label="nothing beats these on both")
        axis.legend(fontsize=8, loc="best")
    axis.set(
        xlabel="service images/s, concurrency 64, one 32x32 PNG per request",
        ylabel="test accuracy, %",
        title="Adaptive test-time views: accuracy against speed",
    )
    axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_configs(value: str) -> list[Config]:
    """`--configs v2-f32,v3-default`: a subset of CONFIGS, in its order; `all`: every one."""
    if value == "all":
        return list(CONFIGS)
    keys = {key.strip() for key in value.split(",") if key.strip()}
    unknown = sorted(keys - {c.key for c in CONFIGS})
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            f"unknown configuration {', '.join(unknown) or '(none)'}; "
            f"known: {', '.join(c.key for c in CONFIGS)}, or all"
        )
    return [c for c in CONFIGS if c.key in keys]


def parse_concurrency(value: str) -> tuple[int, ...]:
    """`1,8,64`; empty: none (that payload is not sent)."""
    try:
        levels = tuple(int(level) for level in value.split(",") if level.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {value!r}") from None
    if any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError(f"concurrency must be >= 1: {value!r}")
    return levels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument(
        "--configs",
        type=parse_configs,
        default=list(CONFIGS),
        help=f"configurations, comma-separated (default: all: {','.join(c.key for c in CONFIGS)})",
    )
    peers.add_argument(parser)
    parser.add_argument(
        "--multi-concurrency",
        type=parse_concurrency,
        default=CONCURRENCY,
        help="concurrencies for 16-PNG requests (default: 1,8,64; '' for none)",
    )
    parser.add_argument(
        "--test-images",
        type=int,
        default=10_000,
        help="score the first N test images (default: all 10,000)",
    )
    parser.add_argument(
        "--models", type=Path, default=ROOT / "models", help="folder holding cifar10/<version>"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="folder for views.{md,csv} and the plot"
    )
    args = parser.parse_args()
    began = time.monotonic()
    ensure_wrk()
    with np.load(DATA) as data:
        images, labels = data["x"], data["y"]
    if not 0 < args.test_images <= len(labels):
        parser.error(f"--test-images must be 1 to {len(labels)}")
    test = images[: args.test_images], labels[: args.test_images].astype(int)
    plan = {"png32": CONCURRENCY, "png32x16": args.multi_concurrency}
    bare_seconds = min(args.duration, 5)
    skipped: dict[str, str] = {}

    # Peers' venvs first: made on first use, they take minutes, and one that fails is skipped.
    launches: dict[str, tuple[list[str], dict[str, str]]] = {}
    for name in args.peers:
        if not installed("tensorflow"):  # their accuracy is measured through it, here
            skip(skipped, name, "no TensorFlow in this venv: pip install -e '.[tensorflow]'")
            continue
        try:
            launches[name] = peers.launch(peers.PEERS[name], args.models / PEER_MODEL)
        except peers.PeerUnavailable as exc:
            skip(skipped, name, str(exc))

    measured: list[Measured] = []
    rows: list[Row] = []
    hows: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        listing = write_pngs(images[:CYCLED_IMAGES], Path(tmp))
        for config in args.configs:
            version_dir = (args.models / config.version).resolve()
            if not (version_dir / "saved_model.pb").is_file():
                skip(skipped, config.key, f"{shown(version_dir)} is missing")
                continue
            try:
                choices = precision_choices(config, servable_precisions(version_dir))
            except Unservable as exc:
                skip(skipped, config.key, str(exc))
                continue
            for precision in choices:
                print(f"{config.key}: scoring and timing {precision or 'default'} ...", flush=True)
                try:
                    result = measure_model(
                        config, version_dir, precision, test, images, bare_seconds
                    )
                    break
                except ModelLoadError as exc:
                    why = str(exc).replace(str(version_dir), str(shown(version_dir)))
                    skip(skipped, f"{config.key} {precision or 'default'}", why)
            else:
                continue
            print(
                f"  {result.label}: {result.served}, accuracy {result.test_accuracy:.2%}, "
                f"ECE {result.ece:.2%}, {result.passes_per_image:.2f} passes/image, bare "
                + ", ".join(f"b{b} {v:.0f}" for b, v in result.bare.items())
                + " img/s",
                flush=True,
            )
            measured.append(result)
            query = f"?views={config.views}" if config.views else ""
            launch = (
                [sys.executable, "-m", "app"],
                service_env(version_dir, precision),
                PORT,
                "/docs",
            )
            try:
                served, how = serve(
                    result.label, launch, query, listing, args.duration, plan, ours=True
                )
            except (RuntimeError, OSError) as exc:  # it did not start or answer: say so, go on
                skip(skipped, f"{config.key} service", str(exc))
                continue
            rows += served
            hows[result.label] = how

        if launches:
            peer_dir = (args.models / PEER_MODEL).resolve()
            print(f"peers: {shown(peer_dir)} through TensorFlow float32 ...", flush=True)
            theirs = measure_peer_model(peer_dir, test)
            env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"}
            for name, (command, extra_env) in launches.items():
                peer = peers.PEERS[name]
                print(f"{name}: serving {PEER_MODEL} ...", flush=True)
                launch = (command, env | extra_env, peer.port, peer.ready_path)
                try:
                    served, how = serve(name, launch, "", listing, args.duration, plan, ours=False)
                except RuntimeError as exc:
                    skip(skipped, name, str(exc))
                    continue
                measured.append(replace(theirs, key=name, label=name))
                rows += served
                if how:
                    hows[name] = how
    if not measured:
        sys.exit("nothing measured: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    write_results(measured, rows, hows, skipped, len(test[0]), args.duration, args.out)
    print(
        f"wrote {shown(args.out)}/views.md, views.csv, views_pareto.png "
        f"({(time.monotonic() - began) / 60:.1f} min)",
        flush=True,
    )


def skip(skipped: dict[str, str], name: str, why: str) -> None:
    skipped[name] = why
    print(f"{name}: skipped ({why})", flush=True)


if __name__ == "__main__":
    main()
