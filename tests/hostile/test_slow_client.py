"""A client that trickles its body is cut off after UPLOAD_TIMEOUT_S with a 408 JSON error."""

import json
import select
import socket
import time

from tests.servers import start_server, wait_until_healthy


def test_slow_upload_gets_408(tiny_model_dir) -> None:
    server, port = start_server(tiny_model_dir, UPLOAD_TIMEOUT_S="1")
    try:
        wait_until_healthy(port, server)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
            )
            # A generous deadline for a busy machine: the point is an answer, not its speed.
            deadline = time.monotonic() + 60
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                sock.sendall(b"x")  # one byte a second: far too slow
                chunk = sock.recv(65536) if _readable(sock, 1.0) else b""
                reply += chunk
                assert time.monotonic() < deadline, "no 408 within 60 s of a 1 s upload timeout"
        health = _get(port, "/health")
    finally:
        server.terminate()
        server.wait(30)

    head, body = reply.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["error"]["code"] == "upload_timeout"
    assert health.startswith(b"HTTP/1.1 200")


def _readable(sock: socket.socket, seconds: float) -> bool:
    return bool(select.select([sock], [], [], seconds)[0])


def _get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return sock.recv(65536)
