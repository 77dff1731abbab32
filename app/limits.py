"""Refuse a declared Content-Length over MAX_UPLOAD_BYTES before a byte of the body is read.

A body without Content-Length (chunked) is counted while it streams by FastAPI's
`max_body_size` on the predict router and cut at the same cap.
"""

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import error_response


class ContentLengthLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                response = error_response(
                    413,
                    "body_too_large",
                    f"the request body is {declared} bytes; the limit is "
                    f"{self.max_body_bytes} (MAX_UPLOAD_BYTES)",
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
