"""Run the service as a real process (`python -m app`) for tests that need a socket."""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_dir: Path, port: int, **settings: str) -> subprocess.Popen:
    """Start the service; `settings` are extra environment variables (upper-case names).
    One process unless `WORKERS` says otherwise: per-process limits and model repositories are
    what most of these tests look at."""
    env = os.environ | {
        "MODEL_DIR": str(model_dir),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "warning",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "WORKERS": "1",
        **settings,
    }
    return subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=env)


def wait_until_healthy(port: int, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server on {port} exited with {process.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"server on {port} never became healthy")


@contextlib.contextmanager
def serving(model_dir: Path, **settings: str) -> Iterator[int]:
    """A healthy `python -m app` on a free port for the block; terminated after it."""
    port = free_port()
    server = start_server(model_dir, port, **settings)
    try:
        wait_until_healthy(port, server)
        yield port
    finally:
        server.terminate()
        server.wait(30)
