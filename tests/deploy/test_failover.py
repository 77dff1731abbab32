"""Two instances behind the project's nginx config: one is stopped, no client request fails;
and gRPC through the same config."""

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import REPO, image_bytes
from tests.servers import free_port, http_get, start_server, wait_until_healthy

NGINX_TEMPLATE = REPO / "deploy" / "nginx" / "nginx.conf.template"
DRAIN_DELAY_S = 3  # how long the draining instance says 503 before its listener closes
pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None and not os.environ.get("CI"),
    reason="nginx is not installed (CI installs it)",
)


def health_status(port: int) -> int | None:
    """/health's status, or None when nothing answers."""
    try:
        return http_get(port, "/health", timeout=5)[0]
    except OSError:
        return None


def wait_for(condition, failure: str, seconds: float = 60) -> None:
    """Poll `condition` until it holds; fail with `failure` after a generous deadline."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.05)


def start_nginx(
    tmp_path: Path,
    listen: int,
    upstreams: list[int],
    grpc_listen: int | None = None,
    grpc_upstreams: list[int] | None = None,
) -> subprocess.Popen:
    """nginx with the project's config; gRPC on free ports to nowhere unless given."""
    grpc_upstreams = grpc_upstreams or [free_port(), free_port()]
    config = NGINX_TEMPLATE.read_text()
    for name, value in {
        "${UPSTREAM_1}": f"127.0.0.1:{upstreams[0]}",
        "${UPSTREAM_2}": f"127.0.0.1:{upstreams[1]}",
        "${LISTEN_PORT}": f"127.0.0.1:{listen}",
        "${UPSTREAM_GRPC_1}": f"127.0.0.1:{grpc_upstreams[0]}",
        "${UPSTREAM_GRPC_2}": f"127.0.0.1:{grpc_upstreams[1]}",
        "${GRPC_LISTEN_PORT}": f"127.0.0.1:{grpc_listen or free_port()}",
    }.items():
        config = config.replace(name, value)
    config = config.replace("pid /tmp/nginx.pid;", f"pid {tmp_path}/nginx.pid;")
    config = config.replace("/tmp/nginx_", f"{tmp_path}/nginx_")
    (tmp_path / "nginx.conf").write_text(config)
    return subprocess.Popen(
        ["nginx", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path), "-g", "daemon off;"]
    )


def test_sigterm_and_kill_of_one_instance_loses_no_request(tiny_model_dir, tmp_path) -> None:
    started = [
        start_server(
            tiny_model_dir,
            DRAIN_DELAY_S=str(DRAIN_DELAY_S),
            GRACEFUL_SHUTDOWN_S="10",
            WORKERS="2",  # each instance a parent of two serving processes
        )
        for _ in range(2)
    ]
    instances = [process for process, _ in started]
    ports = [port for _, port in started]
    lb_port = free_port()
    nginx = start_nginx(tmp_path, lb_port, ports)
    statuses: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def client_loop() -> None:
        payload = {"files": ("a.png", image_bytes(), "image/png")}
        with httpx.Client(base_url=f"http://127.0.0.1:{lb_port}", timeout=30) as client:
            while not stop.is_set():
                try:
                    statuses.append(client.post("/predict", files=payload).status_code)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    try:
        for port, instance in zip(ports, instances, strict=True):
            wait_until_healthy(port, instance)
        wait_for(lambda: health_status(lb_port) == 200, "nginx never proxied /health")
        workers = [threading.Thread(target=client_loop) for _ in range(4)]
        for worker in workers:
            worker.start()
        wait_for(lambda: len(statuses) >= 20, "the clients got no answers through nginx")
        served_before = len(statuses)
        instances[0].send_signal(signal.SIGTERM)
        # /health turns 503 at once and stays so for DRAIN_DELAY_S, then the listener closes.
        draining = None
        deadline = time.monotonic() + DRAIN_DELAY_S
        while draining is None and time.monotonic() < deadline:
            draining = 503 if health_status(ports[0]) == 503 else None
        try:
            exit_code = instances[0].wait(timeout=60)
        except subprocess.TimeoutExpired:
            exit_code = None
        instances[0].kill()  # no-op if it drained and exited on its own
        after_exit = len(statuses)
        wait_for(lambda: len(statuses) >= after_exit + 20, "no answers after the instance left")
        stop.set()
        for worker in workers:
            worker.join(30)
    finally:
        stop.set()
        nginx.send_signal(signal.SIGQUIT)
        for process in [*instances, nginx]:
            if process.poll() is None:
                process.kill()
            process.wait(30)

    assert draining == 503, "the draining instance's /health never answered 503"
    assert exit_code == 0
    assert served_before > 0 and len(statuses) > served_before
    assert failures == []
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


def test_grpc_through_nginx_reaches_the_replica_that_is_up(tiny_model_dir, tmp_path) -> None:
    """The config's gRPC server proxies the protocol; a replica that is down is skipped."""
    grpc_port, nginx_grpc, down = free_port(), free_port(), free_port()
    server, port = start_server(tiny_model_dir, GRPC_PORT=str(grpc_port))
    nginx = start_nginx(tmp_path, free_port(), [port, port], nginx_grpc, [down, grpc_port])
    images = np.zeros((2, 32, 32, 3), np.uint8)
    try:
        wait_until_healthy(port, server)
        with triton_grpc.InferenceServerClient(f"127.0.0.1:{nginx_grpc}") as client:
            wait_for(lambda: _ready(client), "nginx never proxied gRPC")
            answers = []
            for _ in range(4):  # round robin: some go to the replica that is down first
                tensor = triton_grpc.InferInput("images", [2, 32, 32, 3], "UINT8")
                tensor.set_data_from_numpy(images)
                answers.append(client.infer("cifar10", [tensor]).as_numpy("probabilities"))
    finally:
        nginx.send_signal(signal.SIGQUIT)
        server.terminate()
        for process in (server, nginx):
            process.wait(30)

    assert all(answer.shape == (2, 10) for answer in answers)


def _ready(client) -> bool:
    try:
        return client.is_server_ready()
    except InferenceServerException:
        return False
