"""Run the service as a real process (`python -m app`) for tests that need a socket."""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO


def free_port() -> int:
    """A port for a server we cannot hand a socket to (nginx, TensorFlow's cluster); it may race."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def bound_socket() -> Iterator[socket.socket]:
    """A socket bound to a port the kernel picks, for a server to inherit: pass its fileno as
    `LISTEN_FD` and in `pass_fds`; the port is `sock.getsockname()[1]`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


def _server_env(model_dir: Path, sock: socket.socket, settings: dict[str, str]) -> dict[str, str]:
    return os.environ | {
        "MODEL_DIR": str(model_dir),
        "LISTEN_FD": str(sock.fileno()),
        "LOG_LEVEL": "warning",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "WORKERS": "1",
        **settings,
    }


def start_server(model_dir: Path, **settings: str) -> tuple[subprocess.Popen, int]:
    """Start the service on a socket bound here to port 0; the process and its port.

    The server inherits the bound socket (LISTEN_FD), so no other process can take the port
    between our choosing it and the server listening. `settings` are extra environment
    variables (upper-case names). One process unless `WORKERS` says otherwise: per-process
    limits and model repositories are what most of these tests look at.
    """
    with bound_socket() as sock:
        process = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=REPO,
            env=_server_env(model_dir, sock, settings),
            pass_fds=(sock.fileno(),),
        )
        return process, sock.getsockname()[1]


def run_to_exit(model_dir: Path, **settings: str) -> subprocess.CompletedProcess:
    """`python -m app` on a socket of its own, run to its end with its output captured: for a
    server that must refuse to start."""
    with bound_socket() as sock:
        return subprocess.run(
            [sys.executable, "-m", "app"],
            cwd=REPO,
            env=_server_env(model_dir, sock, settings),
            pass_fds=(sock.fileno(),),
            capture_output=True,
            text=True,
            timeout=120,
        )


def http_get(port: int, path: str, timeout: float = 10) -> tuple[int, bytes]:
    """GET `path` from a server on this machine: status and body, a 4xx or 5xx included;
    OSError when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_until_healthy(port: int, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server on {port} exited with {process.returncode}"
        try:
            if http_get(port, "/health", timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server on {port} never became healthy")


@contextlib.contextmanager
def serving(model_dir: Path, **settings: str) -> Iterator[int]:
    """A healthy `python -m app` for the block, its port; terminated after it."""
    server, port = start_server(model_dir, **settings)
    try:
        wait_until_healthy(port, server)
        yield port
    finally:
        server.terminate()
        server.wait(30)
