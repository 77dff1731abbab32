"""Connection-level guards that uvicorn lacks, as a subclass of its httptools protocol.

- **Request-head timeout.** uvicorn times out idle keep-alive connections, but not one that has
  sent half a request head: 2,000 such connections were all still open 75 s later. Here a
  request head (request line and headers) must arrive within HEADER_TIMEOUT_S of the connection
  opening, or of the first byte of the next request on a kept-alive one; otherwise the client
  gets a 408 and the connection is closed (nginx's `client_header_timeout` does the same).
- **Request-head size.** httptools keeps a request line and headers of any size: 217 MiB of
  small headers grew a process by 5.1 GB. Here a head is counted as its bytes arrive; past
  MAX_HEADER_BYTES the client gets a 431 and the connection is closed, before the parser sees
  the rest (nginx answers 400 past its `large_client_header_buffers`).
- **Connection cap.** Beyond MAX_CONNECTIONS open connections, a new request is answered with a
  JSON 503 and its connection closed, instead of the process taking on work it cannot finish.
"""

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.schemas import ErrorDetail, ErrorResponse


def _error_body(code: str, message: str) -> bytes:
    """The API's one error shape (app.schemas), for answers given below the ASGI app."""
    return ErrorResponse(error=ErrorDetail(code=code, message=message)).model_dump_json().encode()


def _json_response(status: int, reason: str, code: str, message: str) -> bytes:
    body = _error_body(code, message)
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


async def _over_capacity(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI app a request gets when the process holds too many connections."""
    body = _error_body(
        "over_capacity", "this process holds MAX_CONNECTIONS connections; retry shortly"
    )
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol plus the two guards above (set by `guarded_protocol`)."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 32 * 1024
    max_connections: int = 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_pending = True  # the first request head is awaited from the start
        self._head_bytes = 0
        self._head_tail = b""  # the last bytes seen, for an end of head split across reads
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._head_pending and not self._count_head(data):
            message = f"the request line and headers exceed {self.max_header_bytes} bytes"
            self._cancel_head_timer()
            self.transport.write(
                _json_response(431, "Request Header Fields Too Large", "headers_too_large", message)
            )
            self.transport.close()
            return
        super().data_received(data)

    def _count_head(self, data: bytes) -> bool:
        """Count the head's bytes in `data` (up to its blank line); False once over the limit."""
        seen = self._head_tail + data
        end = seen.find(b"\r\n\r\n")
        self._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._head_tail))
        self._head_tail = seen[-3:] if end < 0 else b""
        return self._head_bytes <= self.max_header_bytes

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._head_pending:  # the next request on a kept-alive connection
            self._head_pending = True
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._head_pending = False
        self._head_bytes, self._head_tail = 0, b""
        self._cancel_head_timer()
        if len(self.connections) <= self.max_connections:
            super().on_headers_complete()
            return
        served, self.app = self.app, _over_capacity
        try:
            super().on_headers_complete()
        finally:
            self.app = served

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        message = f"the request head did not arrive within {self.header_timeout_s:g} s"
        self.transport.write(_json_response(408, "Request Timeout", "header_timeout", message))
        self.transport.close()


def guarded_protocol(
    header_timeout_s: float, max_header_bytes: int, max_connections: int
) -> type[HttpToolsProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`, with the service's settings."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout_s": header_timeout_s,
            "max_header_bytes": max_header_bytes,
            "max_connections": max_connections,
        },
    )
