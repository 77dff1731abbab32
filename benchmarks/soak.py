"""Soak: the service at saturation for 10 minutes; resident memory must stay flat, no errors.

    python -m benchmarks.soak [--minutes 10] [--concurrency 64]

wrk drives 32x32 PNG requests in one-minute rounds while the server's RSS is sampled every
5 s. Memory growth is measured from the end of the first minute (warm-up) to the end.
Writes benchmarks/results/soak.{md,csv} and soak_rss.png.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.run import LUA, RESULTS, ROOT, ensure_wrk, make_payloads, start, stop

PORT = 8103


def rss_mib(pid: int) -> float:
    """Resident memory of the server process and its children (TF threads share it)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "cifar10")
    args = parser.parse_args()
    ensure_wrk()

    env = os.environ | {"MODEL_DIR": str(args.model), "PORT": str(PORT), "LOG_LEVEL": "warning"}
    samples: list[tuple[float, float]] = []
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        make_payloads(Path(tmp))
        server = start([sys.executable, "-m", "app"], PORT, env)
        started = time.monotonic()
        done = threading.Event()

        def sample() -> None:
            while not done.wait(5):
                samples.append((time.monotonic() - started, rss_mib(server.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        samples.append((0.0, rss_mib(server.pid)))
        sampler.start()
        try:
            for minute in range(args.minutes):
                command = [
                    "wrk",
                    "-t1",
                    f"-c{args.concurrency}",
                    "-d60s",
                    "--timeout",
                    "30s",
                    "-s",
                    str(LUA),
                    f"http://127.0.0.1:{PORT}/predict",
                    "--",
                    f"{tmp}/png32.png",
                    "1",
                ]
                out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                stats = json.loads(out.strip().splitlines()[-1])
                stats["minute"] = minute + 1
                rounds.append(stats)
                print(
                    f"minute {minute + 1}: {stats['requests'] / 60:.0f} req/s, "
                    f"errors {stats['errors']}, rss {samples[-1][1]:.0f} MiB",
                    flush=True,
                )
        finally:
            done.set()
            sampler.join()
            stop(server)

    warm = next(rss for t, rss in samples if t >= 60)
    end = samples[-1][1]
    growth = (end - warm) / warm * 100
    errors = sum(r["errors"] for r in rounds)
    requests = sum(r["requests"] for r in rounds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "soak.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["seconds", "rss_mib"])
        writer.writerows(samples)
    (RESULTS / "soak.md").write_text(
        f"Measured by `python -m benchmarks.soak --minutes {args.minutes} --concurrency "
        f"{args.concurrency}`: {requests} requests of one 32x32 PNG in {args.minutes} min "
        f"({requests / (60 * args.minutes):.0f} req/s), {errors} errors. "
        f"RSS after the first minute {warm:.0f} MiB, at the end {end:.0f} MiB: "
        f"growth {growth:+.1f} % (target <= 5 %), peak {max(r for _, r in samples):.0f} MiB.\n"
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 3))
    axis.plot([t / 60 for t, _ in samples], [r for _, r in samples])
    axis.axvline(1, color="grey", linestyle=":")
    axis.set(xlabel="minutes at saturation", ylabel="server RSS (MiB)", ylim=(0, None))
    fig.tight_layout()
    fig.savefig(RESULTS / "soak_rss.png", dpi=110)
    print((RESULTS / "soak.md").read_text())


if __name__ == "__main__":
    main()
