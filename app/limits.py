"""Limits that act before the body is in memory, in one middleware.

- A declared Content-Length over MAX_UPLOAD_BYTES is refused before a byte is read, and a body
  without one (chunked) is counted as it streams and cut at the same cap.
- The whole body must arrive within UPLOAD_TIMEOUT_S, so a slow client cannot hold a
  connection and a buffer for ever.
"""

import asyncio

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response


class UploadTooSlow(HTTPException):
    """Raised from `receive`, so it reaches the error handlers from wherever the body is read."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"the request body did not arrive within {timeout_s:g} s")


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds {limit} bytes (MAX_UPLOAD_BYTES)")


class RequestLimitsMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, upload_timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.upload_timeout_s = upload_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            response = error_response(
                413,
                "body_too_large",
                f"the request body is {declared} bytes; the limit is "
                f"{self.max_body_bytes} (MAX_UPLOAD_BYTES)",
                headers={"Connection": "close"},
                path=scope["path"],
            )
            await response(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.upload_timeout_s
        received = 0
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # later calls only wait for a disconnect: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise UploadTooSlow(self.upload_timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            body_done = message["type"] != "http.request" or not message.get("more_body")
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
