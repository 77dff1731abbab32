"""LitServe and BentoML beside this service in `python -m benchmarks.run`: venvs and launch.

Each peer runs from its own venv, `~/.cache/cifar10-service-bench/<peer>-venv` (under
$XDG_CACHE_HOME when set), created on first use with the pinned versions below and reused while
they stay the same. It serves the same SavedModel with benchmarks/peers/<peer>_service.py, from
the repository, on its own port; `ready_path` answers 200 once it can serve.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cifar10-service-bench"
# The versions installed and run here; TensorFlow as in this service's own venv.
TENSORFLOW = "tensorflow==2.21.0"
PILLOW = "pillow==13.0.0"


@dataclass(frozen=True)
class Peer:
    name: str
    port: int
    requirements: tuple[str, ...]  # pip install arguments, pinned
    command: tuple[str, ...]  # the first item is a program in the venv's bin/
    ready_path: str  # answers 200 once the peer serves
    env: dict[str, str] = field(default_factory=dict)


PEERS = {
    "litserve": Peer(
        "litserve",
        8103,
        ("litserve==0.2.19", TENSORFLOW, PILLOW, "python-multipart==0.0.34"),
        ("python", "-m", "benchmarks.peers.litserve_service"),
        ready_path="/health",  # 200 once every inference worker has loaded the model
        env={"PORT": "8103"},
    ),
    "bentoml": Peer(
        "bentoml",
        8104,
        ("bentoml==1.4.40", TENSORFLOW, PILLOW),
        (
            "bentoml",
            "serve",
            "benchmarks.peers.bentoml_service:Classifier",
            "--host",
            "127.0.0.1",
            "--port",
            "8104",
        ),
        ready_path="/readyz",
        env={"BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(CACHE / "bentoml-home")},
    ),
}


class PeerUnavailable(RuntimeError):
    """A peer that cannot run here; the message says why."""


def parse_peers(value: str) -> list[str]:
    """`--peers litserve,bentoml`, or `none`."""
    if value == "none":
        return []
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = sorted(set(names) - PEERS.keys())
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown peer {', '.join(unknown)}; known: {', '.join(PEERS)}, or none"
        )
    return names


def add_argument(parser: argparse.ArgumentParser) -> None:
    """`--peers`, the same in every benchmark that measures them."""
    parser.add_argument(
        "--peers",
        type=parse_peers,
        default=list(PEERS),
        help="peers to measure too, comma-separated (default: litserve,bentoml), or '' / none",
    )


def launch(peer: Peer, model_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The command and extra environment that start the peer, its venv made first if needed."""
    folder = venv(peer)
    command = [str(folder / "bin" / peer.command[0]), *peer.command[1:]]
    return command, peer.env | {"MODEL_DIR": str(model_dir.resolve())}


def venv(peer: Peer) -> Path:
    """The peer's venv, installed the first time (minutes: TensorFlow alone is 600 MB)."""
    folder = CACHE / f"{peer.name}-venv"
    stamp = folder / "requirements.txt"  # written last: a venv without it is incomplete
    wanted = "\n".join(peer.requirements) + "\n"
    if stamp.is_file() and stamp.read_text() == wanted:
        return folder
    print(f"{peer.name}: creating {folder}: pip install {' '.join(peer.requirements)}", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / f"{peer.name}-install.log"
    started = time.monotonic()
    steps = (
        [sys.executable, "-m", "venv", str(folder)],
        [str(folder / "bin" / "python"), "-m", "pip", "install", "-q", *peer.requirements],
    )
    with open(log, "w") as out:
        for step in steps:
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                raise PeerUnavailable(
                    f"`{' '.join(step[1:4])}` failed: {_last_error(log)} (log: {log})"
                )
    stamp.write_text(wanted)
    print(f"{peer.name}: venv ready in {time.monotonic() - started:.0f} s", flush=True)
    return folder


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1]
