"""`python -m app` with WORKERS=2: two serving processes on one port, as real processes.

Which worker holds a connection is read from /proc (the socket inode of the server's end of
it), so the tests need no help from the service to tell the workers apart.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.app.test_startup import corrupt_copy
from tests.conftest import image_bytes
from tests.servers import run_to_exit, start_server, wait_until_healthy

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

DRAIN_DELAY_S = 4  # how long the draining workers say 503 before their listener closes
BOUNDARY = "workers-test-boundary"


def wait_for(condition: Callable[[], bool], failure: str, seconds: float = 120) -> None:
    """Poll `condition` until it holds; fail with `failure` after a generous deadline."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.05)


def children(pid: int) -> set[int]:
    """The processes whose parent is `pid`."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)"
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def holder(client: socket.socket, workers: set[int]) -> int | None:
    """The worker holding the server's end of `client`'s connection (an open one)."""
    client_port = client.getsockname()[1]
    server_port = client.getpeername()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        remote_port = int(fields[2].split(":")[1], 16)
        if (local_port, remote_port) == (server_port, client_port):
            inode = fields[9]
    for pid in workers:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def multipart(content: bytes) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + content
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def call(port: int, workers: set[int], method: str, path: str) -> tuple[int, bytes, int | None]:
    """One request on a connection of its own: status, body, and the worker that answered."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        if method == "POST":
            headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
            connection.request("POST", path, body=multipart(image_bytes()), headers=headers)
        else:
            connection.request(method, path)
        response = connection.getresponse()
        body = response.read()
        return response.status, body, holder(connection.sock, workers)  # still kept alive
    finally:
        connection.close()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def two_workers(tiny_model_dir: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    """A healthy WORKERS=2 parent whose two workers both answer; killed after the test."""
    parent, port = start_server(
        tiny_model_dir,
        WORKERS="2",
        DRAIN_DELAY_S=str(DRAIN_DELAY_S),
        GRACEFUL_SHUTDOWN_S="30",
    )
    try:
        wait_until_healthy(port, parent)
        wait_for(lambda: len(children(parent.pid)) == 2, "the parent never had two workers")
        workers = children(parent.pid)
        answered: set[int | None] = set()

        def both_answered() -> bool:
            answered.add(call(port, workers, "GET", "/health")[2])
            return answered >= workers

        wait_for(both_answered, f"not both workers {workers} answered")
        yield parent, port
    finally:
        parent.terminate()
        try:
            parent.wait(60)
        except subprocess.TimeoutExpired:
            parent.kill()  # the workers follow it (they get SIGTERM when it dies)
            parent.wait(30)


def summed(text: str, sample: str, **labels: str) -> float:
    """A sample of the exposition, summed over the label values not given."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and labels.items() <= s.labels.items()
    )


def test_two_workers_share_the_port_and_metrics_sum_over_them(two_workers) -> None:
    parent, port = two_workers
    workers = children(parent.pid)
    answered_by: dict[int | None, int] = {}

    def predict() -> bool:
        status, body, pid = call(port, workers, "POST", "/predict")
        assert status == 200, body
        answered_by[pid] = answered_by.get(pid, 0) + 1
        return all(answered_by.get(worker, 0) >= 3 for worker in workers)

    wait_for(predict, "the requests did not reach both workers")
    sent = sum(answered_by.values())

    # Whichever worker answers the scrape, it counts every worker's requests.
    scraped_by: set[int | None] = set()

    def scrape() -> bool:
        status, body, pid = call(port, workers, "GET", "/metrics")
        assert status == 200
        text = body.decode()
        counted = (
            summed(text, "http_requests_total", route="/predict", status="200"),
            summed(text, "images_classified_total"),
            summed(text, "inference_batch_size_images_sum"),
        )
        assert counted == (sent, sent, sent), f"worker {pid}: {counted}, {sent} sent"
        assert summed(text, "batch_queue_images") == 0
        assert summed(text, "model_info", version="1") == 1
        scraped_by.add(pid)
        return scraped_by >= workers

    wait_for(scrape, "the scrapes did not reach both workers")
    assert parent.poll() is None


def test_sigterm_drains_both_workers_and_the_parent_exits_0(two_workers) -> None:
    parent, port = two_workers
    workers = children(parent.pid)
    body = multipart(image_bytes())
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    # In-flight requests: each worker has read a request head and asked for its body.
    in_flight: dict[socket.socket, int | None] = {}

    def open_request() -> bool:
        client = socket.create_connection(("127.0.0.1", port), timeout=60)
        client.sendall(head)
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += client.recv(1024)
        assert reply.startswith(b"HTTP/1.1 100 Continue"), reply
        in_flight[client] = holder(client, workers)
        return set(in_flight.values()) >= workers

    try:
        wait_for(open_request, "could not get a request in flight on both workers")
        parent.send_signal(signal.SIGTERM)

        # Both workers turn /health to 503 (once the signal has reached them) and keep
        # answering for DRAIN_DELAY_S.
        health: dict[int | None, list[int]] = {}
        while not all(503 in health.get(worker, []) for worker in workers):
            try:
                status, _, pid = call(port, workers, "GET", "/health")
            except OSError:  # the listener closed
                break
            health.setdefault(pid, []).append(status)
        for worker in workers:
            statuses = health.get(worker, [])
            assert 503 in statuses and set(statuses[statuses.index(503) :]) == {503}, health

        # Only once nothing listens does the rest of each request arrive: still answered.
        wait_for(lambda: refused(port), "the workers never closed their listener")
        answers = []
        for client in in_flight:
            client.sendall(body)
            response = http.client.HTTPResponse(client)
            response.begin()
            answers.append((response.status, json.loads(response.read())))
    finally:
        for client in in_flight:
            client.close()

    assert [status for status, _ in answers] == [200] * len(in_flight), answers
    assert all(answer["predictions"][0]["label"] for _, answer in answers)
    assert parent.wait(60) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


def test_a_worker_that_dies_is_replaced(two_workers) -> None:
    parent, port = two_workers
    killed, survivor = sorted(children(parent.pid))
    os.kill(killed, signal.SIGKILL)

    wait_for(lambda: len(children(parent.pid) - {killed}) == 2, "the dead worker was not replaced")
    (replacement,) = children(parent.pid) - {killed, survivor}
    workers = {survivor, replacement}

    def replacement_answered() -> bool:
        status, _, pid = call(port, workers, "POST", "/predict")
        assert status == 200
        return pid == replacement

    wait_for(replacement_answered, "the replacement never answered")
    assert parent.poll() is None


def test_a_broken_model_stops_the_parent_with_one_clear_line(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model_dir = corrupt_copy(tiny_model_dir, tmp_path)
    result = run_to_exit(model_dir, WORKERS="2")

    lines = [line for line in result.stderr.splitlines() if "cannot serve the model" in line]
    assert len(lines) == 1 and str(model_dir) in lines[0], result.stderr[-3000:]
    assert result.returncode == 3
