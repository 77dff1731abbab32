"""Connections that stall while sending the request head are closed (HEADER_TIMEOUT_S), and
beyond MAX_CONNECTIONS a request gets a JSON 503 instead of a hang: against a live server."""

import http.client
import json
import select
import socket
import time

from tests.servers import http_get, serving

STALLED = 300
HALF_A_HEAD = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-"


def open_stalled(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(HALF_A_HEAD)
        sockets.append(sock)
    return sockets


def health(port: int) -> tuple[int, dict]:
    status, body = http_get(port, "/health")
    return status, json.loads(body)


def read_until_closed(sock: socket.socket, deadline: float) -> bytes | None:
    """Everything the server sends until it closes; None if it is still open at `deadline`."""
    received = b""
    while time.monotonic() < deadline:
        if select.select([sock], [], [], 0.2)[0]:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk
    return None


def test_stalled_heads_are_closed_with_408_while_health_answers(tiny_model_dir) -> None:
    stalled: list[socket.socket] = []
    with serving(tiny_model_dir, HEADER_TIMEOUT_S="3", MAX_CONNECTIONS="2000") as port:
        stalled = open_stalled(port, STALLED)
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)  # sends nothing
        stalled.append(silent)

        # The event loop keeps serving while they hang.
        assert [health(port)[0] for _ in range(5)] == [200] * 5

        deadline = time.monotonic() + 3 + 30  # the timeout plus generous slack for a busy CI
        replies = [read_until_closed(sock, deadline) for sock in stalled]
        still_open = sum(reply is None for reply in replies)
        assert still_open == 0, f"{still_open} of {len(stalled)} stalled connections still open"
        for reply in replies:
            head, body = reply.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 408")
            assert json.loads(body)["error"]["code"] == "header_timeout"
        assert health(port)[0] == 200
    for sock in stalled:
        sock.close()


def test_a_prompt_keep_alive_client_is_not_cut_off(tiny_model_dir) -> None:
    """The head timer restarts per request: a client that sends whole heads promptly keeps its
    connection across several requests spread over more than HEADER_TIMEOUT_S."""
    with serving(tiny_model_dir, HEADER_TIMEOUT_S="1") as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        sockets = []
        for _ in range(3):
            connection.request("GET", "/health/live")
            reply = connection.getresponse()
            assert reply.status == 200 and json.loads(reply.read()) == {"status": "alive"}
            sockets.append(connection.sock)
            time.sleep(0.6)  # idle, well inside uvicorn's keep-alive timeout
        connection.close()
        assert sockets[0] is sockets[1] is sockets[2]  # one connection throughout


def test_beyond_max_connections_a_request_gets_json_503(tiny_model_dir) -> None:
    with serving(tiny_model_dir, HEADER_TIMEOUT_S="60", MAX_CONNECTIONS="20") as port:
        stalled = open_stalled(port, 25)
        status, body = health(port)
        for sock in stalled:
            sock.close()
        deadline = time.monotonic() + 30
        while health(port)[0] != 200:
            assert time.monotonic() < deadline, "still refused after the connections closed"
            time.sleep(0.2)

    assert status == 503 and body["error"]["code"] == "over_capacity"
