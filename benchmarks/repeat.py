"""How much the headline cell moves between runs: the service's 32x32 PNG at concurrency 64.

    python -m benchmarks.repeat [--runs 6] [--duration 10]

Each run starts the service, drives that one cell with wrk, stops the service and measures the
bare model at batch 256 for 5 s, so each ratio compares two measurements taken seconds apart.
Writes benchmarks/results/serving_repeats.md.
"""

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from app.model import load_classifier
from benchmarks import run

PORT = 8103


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--model", type=Path, default=run.ROOT / "models" / "cifar10")
    args = parser.parse_args()
    run.ensure_wrk()

    env = os.environ | {
        "MODEL_DIR": str(args.model),
        "PORT": str(PORT),
        "LOG_LEVEL": "warning",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    classifier = load_classifier(args.model)
    rates, bares = [], []
    with tempfile.TemporaryDirectory() as tmp:
        payload = Path(tmp) / "png32.png"
        run.make_payloads(Path(tmp))
        for attempt in range(args.runs):
            service = run.start([sys.executable, "-m", "app"], PORT, env)
            try:
                run.settle(service)  # every worker process loaded
                run.drive(PORT, payload, 1, 8, 2)  # warm-up, not recorded
                stats = run.drive(PORT, payload, 1, 64, args.duration)
            finally:
                run.stop(service)  # the bare model gets the machine to itself, as in benchmarks.run
            if stats["errors"]:
                sys.exit(f"run {attempt + 1}: {stats['errors']} errors")
            rates.append(stats["requests"] / (stats["duration_us"] / 1e6))
            bares.append(run.bare_rate(classifier, 256, seconds=5))
            print(f"run {attempt + 1}: {rates[-1]:.1f} vs bare {bares[-1]:.1f}", flush=True)
    ratios = [rate / bare for rate, bare in zip(rates, bares, strict=True)]
    lines = [
        f"Measured by `python -m benchmarks.repeat --runs {args.runs} --duration "
        f"{args.duration:g} --model {run.shown(args.model)}` on {os.cpu_count()} CPUs "
        f"({run.cpu_model()}): the service ({classifier.backend} {classifier.precision}), 32x32 "
        "PNG, one image per request, concurrency 64, against the bare model at batch 256 "
        "measured right after each run.",
        "",
        "| run | service images/s | bare images/s | service / bare |",
        "|---|---|---|---|",
        *(
            f"| {i} | {r:.1f} | {b:.1f} | {q:.2f} |"
            for i, (r, b, q) in enumerate(zip(rates, bares, ratios, strict=True), 1)
        ),
        "",
        f"Median {statistics.median(ratios):.2f}, lowest {min(ratios):.2f}, "
        f"highest {max(ratios):.2f}.",
    ]
    run.RESULTS.mkdir(parents=True, exist_ok=True)
    (run.RESULTS / "serving_repeats.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
