"""Hot reload under load: how long a new version takes to serve, and what requests see meanwhile.

    python -m benchmarks.hot_reload [--threads 8] [--poll 1] [--model models/cifar10/2]

Serves a copy of one committed version as version 1 of a scratch model folder, with
`--threads` clients posting a real CIFAR-10 test PNG without pause. Then, 5 s apart, as an
operator would: a new version is renamed into place (the same weights, version 2); a broken
version 3 appears; version 2 is deleted (a roll back to 1). Each step's time from the
filesystem change to the first answer that shows it, and every answer's status, are recorded.
Writes benchmarks/results/hot_reload.{md,csv}.
"""

import argparse
import csv
import io
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.run import DATA, RESULTS, ROOT, start, stop

PORT = 8105
STEP_S = 5.0


@dataclass
class Answer:
    done: float
    status: int
    version: int | None
    seconds: float


class Load:
    def __init__(self, port: int, threads: int, payload: bytes) -> None:
        self.url = f"http://127.0.0.1:{port}/predict"
        self.payload = payload
        self.answers: list[Answer] = []
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.stopped.is_set():
                started = time.monotonic()
                try:
                    response = client.post(self.url, files={"files": ("cat.png", self.payload)})
                    version = response.json().get("version") if response.is_success else None
                    status = response.status_code
                except httpx.HTTPError:
                    status, version = 0, None
                now = time.monotonic()
                self.answers.append(Answer(now, status, version, now - started))

    def first_since(self, since: float, version: int, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for answer in self.answers:
                if answer.done >= since and answer.version == version:
                    return answer.done
            time.sleep(0.01)
        raise RuntimeError(f"version {version} never answered")


def step(name: str, changed: float, effect: float, shows: str) -> dict[str, object]:
    return {"step": name, "changed": changed, "effect": effect, "shows": shows}


def refusals(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith('model_version_events_total{event="refused"}'):
                return float(line.split()[-1])
    return 0.0


def copy_version(source: Path, model_dir: Path, version: int) -> Path:
    """A copy of `source` as `version`, under its temporary name; the caller renames it."""
    partial = model_dir / f".{version}.partial"
    shutil.copytree(source, partial, ignore=shutil.ignore_patterns("report"))
    metadata = json.loads((partial / "metadata.json").read_text())
    (partial / "metadata.json").write_text(json.dumps(metadata | {"version": version}))
    return partial


def window(answers: list[Answer], start: float, end: float) -> dict[str, float]:
    inside = [a for a in answers if start <= a.done < end]
    latencies = np.array([a.seconds for a in inside]) * 1000 if inside else np.zeros(1)
    return {
        "answers": len(inside),
        "failed": sum(a.status != 200 for a in inside),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--poll", type=float, default=1.0, help="MODEL_POLL_S")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "cifar10" / "2")
    args = parser.parse_args()

    with np.load(DATA) as data:
        buffer = io.BytesIO()
        Image.fromarray(data["x"][0]).save(buffer, format="PNG")
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "cifar10"
        model_dir.mkdir()
        copy_version(args.model, model_dir, 1).rename(model_dir / "1")
        env = os.environ | {
            "MODEL_DIR": str(model_dir),
            "MODEL_POLL_S": str(args.poll),
            "PORT": str(PORT),
            "LOG_LEVEL": "warning",
        }
        server = start([sys.executable, "-m", "app"], PORT, env)
        load = Load(PORT, args.threads, buffer.getvalue())
        try:
            for thread in load.threads:
                thread.start()
            time.sleep(STEP_S)

            new = copy_version(args.model, model_dir, 2)
            changed = time.monotonic()
            new.rename(model_dir / "2")
            served = load.first_since(changed, 2)
            rows.append(
                step(
                    "new version 2 renamed into place",
                    changed,
                    served,
                    "first answer from version 2",
                )
            )
            time.sleep(STEP_S)

            broken = copy_version(args.model, model_dir, 3)
            (broken / "saved_model.pb").write_bytes(b"\x00 not a protobuf")
            before = refusals(PORT)
            changed = time.monotonic()
            broken.rename(model_dir / "3")
            while refusals(PORT) <= before:
                time.sleep(0.01)
            rows.append(
                step(
                    "broken version 3 renamed into place",
                    changed,
                    time.monotonic(),
                    "refused (metric); 2 serves on",
                )
            )
            time.sleep(STEP_S)

            changed = time.monotonic()
            shutil.rmtree(model_dir / "2")
            served = load.first_since(changed, 1)
            rows.append(
                step(
                    "version 2 deleted (roll back)", changed, served, "first answer from version 1"
                )
            )
            time.sleep(STEP_S)
        finally:
            load.stopped.set()
            for thread in load.threads:
                thread.join(60)
            stop(server)
    write_results(rows, load.answers, args)


def write_results(
    rows: list[dict[str, object]], answers: list[Answer], args: argparse.Namespace
) -> None:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    table = []
    for row in rows:
        changed, effect = float(row["changed"]), float(row["effect"])  # type: ignore[arg-type]
        during = window(answers, changed, effect + 1)
        table.append(
            {
                "step": row["step"],
                "seconds_to_effect": round(effect - changed, 2),
                "shows": row["shows"],
                **during,
            }
        )
    total = window(answers, 0, float("inf"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "hot_reload.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    lines = [
        "# Hot reload under load",
        "",
        f"`python -m benchmarks.hot_reload --threads {args.threads} --poll {args.poll:g}` on "
        f"{os.cpu_count()} CPUs ({cpu}); model: a copy of `{display(args.model)}`; "
        f"{args.threads} clients posting a 32x32 PNG without pause.",
        "",
        "| step | seconds to effect | effect | answers from change to 1 s after the effect "
        "| failed | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['step']} | {r['seconds_to_effect']} | {r['shows']} | {r['answers']} | "
            f"{r['failed']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
            for r in table
        ),
        "",
        f"Whole run: {total['answers']} answers, {total['failed']} failed, "
        f"p50 {total['p50_ms']:.1f} ms, p99 {total['p99_ms']:.1f} ms.",
        "",
    ]
    (RESULTS / "hot_reload.md").write_text("\n".join(lines))
    print("\n".join(lines))


def display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return path.name


if __name__ == "__main__":
    main()
