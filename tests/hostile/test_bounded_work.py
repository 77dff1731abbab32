"""Small hostile requests get bounded work, against a live `python -m app` (WORKERS=1).

Each case is generated here and sent while a thread asks /health every 50 ms and samples the
server's RSS: it must be answered as expected (4xx, 431, or 200 for a legal image), the
process must grow by less than 200 MB, and /health must answer within 1 s throughout.
"""

import contextlib
import io
import json
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import tiff_with_strips
from tests.servers import start_server, wait_until_healthy

MAX_GROWTH_MB = 200
MAX_HEALTH_S = 1.0


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


class Watch:
    """/health latency and the server's RSS, sampled in a thread while a case runs."""

    def __init__(self, port: int, pid: int) -> None:
        self.port, self.pid = port, pid
        self.start_mb = self.peak_mb = rss_mb(pid)
        self.slowest_s = 0.0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    status = client.get("/health").status_code
                except httpx.HTTPError as error:
                    status = repr(error)
                self.slowest_s = max(self.slowest_s, time.monotonic() - started)
                if status != 200:
                    self.failures.append(str(status))
                self.peak_mb = max(self.peak_mb, rss_mb(self.pid))
                self._stop.wait(0.05)

    def __enter__(self) -> "Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[tuple[int, int]]:
    """One `python -m app` for every case: its port and pid."""
    process, port = start_server(tiny_model_dir)
    try:
        wait_until_healthy(port, process)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(30)


def raw_exchange(port: int, chunks: Iterator[bytes]) -> bytes:
    """Send chunks until the server answers or closes; return what it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setblocking(False)
        answer = b""
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            try:
                answer += sock.recv(65536)
                break  # the server answered before the head was complete
            except BlockingIOError:
                continue
        sock.settimeout(30)
        try:
            while part := sock.recv(65536):
                answer += part
        except (ConnectionResetError, TimeoutError):
            pass
    return answer


def many_headers() -> Iterator[bytes]:
    yield b"GET /health HTTP/1.1\r\nHost: x\r\n"
    for i in range(46 * 1024):  # 46 MiB of 1 KiB headers, if nothing stops it
        yield f"X-Filler-{i}: {'a' * 1000}\r\n".encode()


def one_huge_header() -> Iterator[bytes]:
    yield b"GET /health HTTP/1.1\r\nHost: x\r\nX-Huge: "
    for _ in range(1600):  # 100 MiB
        yield b"a" * 65536


def saved(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_with_text(chunks: int, size: int) -> bytes:
    """A 32x32 PNG carrying `chunks` zTXt chunks of `size` zero bytes each (compressed)."""
    png = saved(Image.new("RGB", (32, 32)), "PNG")
    text = zlib.compress(bytes(size), 9)
    chunk_data = b"Comment\x00\x00" + text
    chunk = struct.pack(">I", len(chunk_data)) + b"zTXt" + chunk_data
    chunk += struct.pack(">I", zlib.crc32(b"zTXt" + chunk_data))
    return png[:33] + chunk * chunks + png[33:]  # after the 8-byte signature and IHDR


def jpeg_with_bad_exif() -> bytes:
    """Orientation 6 beside a ResolutionUnit of 65535 stored as a signed short: Pillow reads it,
    and rewriting the EXIF without the orientation raises struct.error (once a 500)."""
    jpeg = saved(Image.new("RGB", (8, 8), (1, 2, 3)), "JPEG")
    entries = struct.pack("<HHII", 0x0112, 3, 1, 6) + struct.pack("<HHII", 0x0128, 8, 1, 0xFFFF)
    tiff = b"II*\x00" + struct.pack("<IH", 8, 2) + entries + bytes(4)
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def upload(port: int, files: list[tuple[str, bytes]]) -> httpx.Response:
    with httpx.Client(timeout=120) as client:
        return client.post(f"http://127.0.0.1:{port}/predict", files=[("files", f) for f in files])


def grey16_png(side: int) -> bytes:
    return saved(Image.fromarray(np.zeros((side, side), np.uint16)), "PNG")


CASES: dict[str, Callable[[int], tuple[int, str | None]]] = {}


def case(function: Callable[[int], tuple[int, str | None]]):
    CASES[function.__name__] = function
    return function


@case
def header_flood(port: int) -> tuple[int, str | None]:
    answer = raw_exchange(port, many_headers())
    return int(answer.split()[1]), json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"]


@case
def one_100_mib_header(port: int) -> tuple[int, str | None]:
    answer = raw_exchange(port, one_huge_header())
    return int(answer.split()[1]), json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"]


def answered(response: httpx.Response) -> tuple[int, str | None]:
    code = response.json()["error"]["code"] if response.status_code >= 400 else None
    return response.status_code, code


@case
def tiff_listing_1_5_million_strips(port: int) -> tuple[int, str | None]:
    return answered(upload(port, [("strips.tif", tiff_with_strips(1_500_000))]))


@case
def two_16_bit_png_of_6324_squared(port: int) -> tuple[int, str | None]:
    png = grey16_png(6324)
    return answered(upload(port, [("a.png", png), ("b.png", png)]))


@case
def float_tiff_of_5000_squared(port: int) -> tuple[int, str | None]:
    tiff = saved(Image.new("F", (5000, 5000)), "TIFF", compression="tiff_adobe_deflate")
    return answered(upload(port, [("float.tif", tiff)]))


@case
def rgba_webp_of_6000_squared(port: int) -> tuple[int, str | None]:
    webp = saved(Image.new("RGBA", (6000, 6000), (9, 9, 9, 128)), "WEBP", lossless=True)
    return answered(upload(port, [("big.webp", webp)]))


@case
def pngs_with_64_mib_of_text_each(port: int) -> tuple[int, str | None]:
    png = png_with_text(64, 1024 * 1024)
    return answered(upload(port, [(f"{i}.png", png) for i in range(64)]))


@case
def jpeg_with_malformed_exif(port: int) -> tuple[int, str | None]:
    return answered(upload(port, [("exif.jpg", jpeg_with_bad_exif())]))


@case
def v2_bytes_batch_of_zero(port: int) -> tuple[int, str | None]:
    body = {"inputs": [{"name": "images", "shape": [0], "datatype": "BYTES", "data": []}]}
    with httpx.Client(timeout=60) as client:
        response = client.post(f"http://127.0.0.1:{port}/v2/models/cifar10/infer", json=body)
    return response.status_code, None if response.is_success else "refused"


@case
def v2_json_of_30_mb_of_empty_lists(port: int) -> tuple[int, str | None]:
    data = b"[]," * (10 * 1024 * 1024) + b"[]"
    body = b'{"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8", '
    body += b'"data": [' + data + b"]}]}"
    with httpx.Client(timeout=60) as client:
        response = client.post(
            f"http://127.0.0.1:{port}/v2/models/cifar10/infer",
            content=body,
            headers={"content-type": "application/json"},
        )
    return response.status_code, None if response.is_success else "refused"


@case
def forty_uploads_of_32_mib_stopped_short(port: int) -> tuple[int, str | None]:
    """Each declares 32 MiB, sends 1 MiB and stalls: the budget (256 MiB) holds 8 of them, the
    rest are answered 503 before their bodies are read."""
    length = 32 * 1024 * 1024 - 1024
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n\r\n"
    ).encode()
    part = (
        b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(40)]
    try:
        for sock in sockets:
            with contextlib.suppress(OSError):  # a refused one may be closed mid-send
                sock.sendall(head + part + b"a" * (1024 * 1024))
        refused = 0
        for sock in sockets:
            sock.settimeout(2)
            answer = b""
            with contextlib.suppress(OSError):  # a timeout: held, its body within the budget
                answer = sock.recv(64)
            refused += answer.startswith(b"HTTP/1.1 503")
    finally:
        for sock in sockets:
            sock.close()
    return (503, "overloaded") if refused == 40 - 8 else (refused, None)


EXPECTED = {
    "header_flood": (431, "headers_too_large"),
    "one_100_mib_header": (431, "headers_too_large"),
    "tiff_listing_1_5_million_strips": (400, "corrupt_image"),
    "two_16_bit_png_of_6324_squared": (413, "image_too_large"),
    "float_tiff_of_5000_squared": (413, "image_too_large"),
    "rgba_webp_of_6000_squared": (413, "image_too_large"),
    "pngs_with_64_mib_of_text_each": (400, "corrupt_image"),
    "jpeg_with_malformed_exif": (400, "corrupt_image"),
    "v2_bytes_batch_of_zero": (400, "refused"),
    "v2_json_of_30_mb_of_empty_lists": (413, "refused"),
    "forty_uploads_of_32_mib_stopped_short": (503, "overloaded"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_hostile_case_is_answered_with_bounded_work(
    server: tuple[int, int], name: str
) -> None:
    port, pid = server

    with Watch(port, pid) as watch:
        got = CASES[name](port)

    assert got == EXPECTED[name]
    assert watch.peak_mb - watch.start_mb < MAX_GROWTH_MB, (watch.start_mb, watch.peak_mb)
    assert watch.slowest_s < MAX_HEALTH_S and not watch.failures, (watch.slowest_s, watch.failures)


def test_a_head_just_under_the_limit_with_a_large_body_is_served(server: tuple[int, int]) -> None:
    """The count stops at the head's blank line: body bytes in the same reads are not head."""
    port, _ = server
    png = saved(Image.new("RGB", (1200, 1200), (200, 10, 10)), "PNG", compress_level=0)
    headers = {f"X-Filler-{i}": "a" * 1000 for i in range(28)}  # ~28.5 KiB of 32

    with httpx.Client(timeout=60) as client:
        response = client.post(
            f"http://127.0.0.1:{port}/predict", files={"files": ("big.png", png)}, headers=headers
        )

    assert len(png) > 4 * 1024 * 1024
    assert response.status_code == 200, response.text


def test_no_server_banner_and_the_page_sends_its_security_headers(
    server: tuple[int, int],
) -> None:
    port, _ = server
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        page, health = client.get("/"), client.get("/health")

    assert "server" not in page.headers and "server" not in health.headers
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
