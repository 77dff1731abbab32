"""Limits that act before the body is in memory, in one middleware.

- A declared Content-Length over MAX_UPLOAD_BYTES is refused before a byte is read, and a body
  without one (chunked) is counted as it streams and cut at the same cap.
- The whole body must arrive within UPLOAD_TIMEOUT_S, so a slow client cannot hold a
  connection and a buffer for ever.
- The bodies of all requests in flight share MAX_UPLOAD_BYTES_IN_FLIGHT: 40 uploads of 32 MiB,
  each stopped short of its end, once held 1.16 GB until their timeout. A request whose body
  would pass the budget gets 503 with Retry-After (from its declared length, before a byte is
  read; else as its bytes arrive); a body's bytes count until its response is sent. gRPC's
  messages count against the same budget (app.grpc_service).
- A compressed body (`inflate`) is counted against MAX_UPLOAD_BYTES again after inflating, as
  it inflates: a compression bomb stops at the limit, never in memory past it.
"""

import asyncio
import zlib
from collections.abc import AsyncIterator

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError, error_response

# Content-Encoding -> zlib's wbits: gzip's header, or HTTP's "deflate" (zlib's header, RFC 9110).
ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
INFLATE_STEP = 256 * 1024  # bytes inflated per step: the most held beside the body so far


class UploadTooSlow(HTTPException):
    """Raised from `receive`, so it reaches the error handlers from wherever the body is read."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"the request body did not arrive within {timeout_s:g} s")


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds {limit} bytes (MAX_UPLOAD_BYTES)")


class BudgetSpent(HTTPException):
    def __init__(self, budget: int) -> None:
        super().__init__(
            503,
            f"request bodies in flight would pass {budget} bytes "
            "(MAX_UPLOAD_BYTES_IN_FLIGHT); retry shortly",
            headers={"Retry-After": "1"},
        )


class InFlightBudget:
    """MAX_UPLOAD_BYTES_IN_FLIGHT: the bytes of request bodies one process holds at once, HTTP
    bodies and gRPC messages alike, until each is answered."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, count: int) -> bool:
        """Hold `count` more bytes, unless that passes the budget."""
        if self.held + count > self.limit:
            return False
        self.held += count
        return True

    def give(self, count: int) -> None:
        self.held -= count


class RequestLimitsMiddleware:
    def __init__(
        self, app: ASGIApp, max_body_bytes: int, upload_timeout_s: float, budget: InFlightBudget
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.upload_timeout_s = upload_timeout_s
        self.budget = budget

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
        reserved = declared or 0
        if not self.budget.take(reserved):
            spent = BudgetSpent(self.budget.limit)
            response = error_response(
                503, "overloaded", spent.detail, headers=spent.headers, path=scope["path"]
            )
            await response(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.upload_timeout_s
        received = 0
        body_done = False

        def hold(count: int) -> None:
            """A body without a declared length (or longer than declared) holds more as it
            arrives."""
            nonlocal reserved
            if count > reserved:
                if not self.budget.take(count - reserved):
                    raise BudgetSpent(self.budget.limit)
                reserved = count

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
                hold(received)
            body_done = message["type"] != "http.request" or not message.get("more_body")
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            self.budget.give(reserved)


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


async def inflate(chunks: AsyncIterator[bytes], encoding: str, max_bytes: int) -> bytes:
    """A gzip or deflate body inflated as it streams in, never past `max_bytes`: each step
    inflates at most INFLATE_STEP bytes and no further than the limit (zlib's max_length), so
    1 GB of zeros squeezed into 1 MB is a 413 after holding `max_bytes`, not a 1 GB buffer."""
    inflater = zlib.decompressobj(ENCODINGS[encoding])
    body = bytearray()
    try:
        async for chunk in chunks:
            while True:  # until this chunk is used up and nothing is left pending
                room = min(INFLATE_STEP, max_bytes + 1 - len(body))
                inflated = inflater.decompress(chunk, room)
                body += inflated
                if len(body) > max_bytes:
                    raise ApiError(
                        413,
                        "body_too_large",
                        f"the request body inflates past {max_bytes} bytes (MAX_UPLOAD_BYTES)",
                    )
                chunk = inflater.unconsumed_tail
                if not chunk and len(inflated) < room:
                    break
    except zlib.error as exc:
        raise ApiError(
            400, "invalid_request", f"the {encoding} body cannot be inflated: {exc}"
        ) from None
    if not inflater.eof:
        raise ApiError(400, "invalid_request", f"the {encoding} body is truncated")
    return bytes(body)
