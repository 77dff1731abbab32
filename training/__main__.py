"""`python -m training`: train, export to models/<name>/<next version>/, write the report."""

from __future__ import annotations

import argparse
import ctypes.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from training.config import RunConfig


def tta_level(value: str) -> int | str:
    return value if value == "auto" else int(value)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags given, and only those: every default is RunConfig's (training/config.py), the
    recipe's where RunConfig says None (training/recipe.py)."""
    parser = argparse.ArgumentParser(
        prog="python -m training", description=__doc__, argument_default=argparse.SUPPRESS
    )
    parser.add_argument(
        "--arch",
        choices=("fast", "seed"),
        help="fast: the airbench-style recipe; seed: the blog's network "
        f"(default {RunConfig.arch})",
    )
    parser.add_argument(
        "--data",
        help="offline npz folder, cifar-10-batches-py folder, "
        "cifar-10-python.tar.gz, a folder of class folders, or 'keras' "
        "(default: the offline copy in ../shared/data/cifar10, else download)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help="fast: total epochs; seed: plain-data epochs "
        "(default: the recipe's, training/recipe.py)",
    )
    parser.add_argument(
        "--aug-epochs",
        type=int,
        help="seed only: epochs with augmentation after the plain ones (default: the recipe's)",
    )
    parser.add_argument("--batch-size", type=int, help="images per step (default: the recipe's)")
    parser.add_argument(
        "--val-size",
        type=int,
        help="images held out of the end of train for validation (0 allowed; "
        f"default {RunConfig.val_size})",
    )
    parser.add_argument("--seed", type=int, help=f"random seed (default {RunConfig.seed})")
    parser.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="auto: float16 on a GPU, bfloat16 on a CPU with AMX or AVX-512 BF16, else float32 "
        f"(default {RunConfig.precision})",
    )
    parser.add_argument(
        "--tta",
        type=tta_level,
        choices=("auto", 0, 1, 2),
        help="test-time views in the export, each a forward pass per served image: 0 (1 view), "
        "1 (+ mirror: 2), 2 (+ 1 px shifts: 6), or auto (the recipe's): the best on validation",
    )
    parser.add_argument("--name", help=f"model name: models/<name>/ (default {RunConfig.name})")
    parser.add_argument(
        "--models-dir",
        type=Path,
        help=f"versions go to <this>/<name>/<version>/ (default {RunConfig.models_dir})",
    )
    parser.add_argument(
        "--checkpoints-dir",
        type=Path,
        help=f"per-epoch checkpoints go to <this>/<name>/ (default {RunConfig.checkpoints_dir})",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last epoch's checkpoint of an interrupted run",
    )
    parser.add_argument(
        "--output-version", type=int, help="version folder to write (default: highest existing + 1)"
    )
    parser.add_argument(
        "--cluster-wait-s",
        type=float,
        help="with TF_CONFIG: seconds each worker waits for all the others to start before "
        f"it gives up (default {RunConfig.cluster_wait_s:g})",
    )
    parser.add_argument("--limit-train", type=int, help=argparse.SUPPRESS)  # development only
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(argv)
    from training.fit import TrainingInterrupted
    from training.hardware import ClusterError
    from training.train import run

    try:
        run(RunConfig(**vars(args)))
    except TrainingInterrupted as interrupted:
        print(f"\n{interrupted}", file=sys.stderr)
        return 130
    except ClusterError as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 1
    return 0


def with_tcmalloc() -> None:
    """Re-run this command with tcmalloc preloaded when the machine has it.

    glibc's malloc returns TensorFlow's large activation buffers to the kernel and faults them
    back in every step: on a 2-core EPYC half the CPU time went to the kernel, and the same
    training steps ran 1.4x faster with tcmalloc (benchmarks/results/training.md). Install it
    with `apt-get install libtcmalloc-minimal4`; TRAINING_MALLOC=system keeps glibc's.
    """
    if "tcmalloc" in os.environ.get("LD_PRELOAD", "") or os.environ.get("TRAINING_MALLOC"):
        return
    library = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    if library is None:  # the run's first line then says "malloc: glibc"
        return
    preload = " ".join(filter(None, [library, os.environ.get("LD_PRELOAD")]))
    env = os.environ | {"LD_PRELOAD": preload, "TRAINING_MALLOC": library}
    os.execve(sys.executable, [sys.executable, "-m", "training", *sys.argv[1:]], env)


if __name__ == "__main__":
    with_tcmalloc()
    raise SystemExit(main())
