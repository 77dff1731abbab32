"""One JSON error shape for everything a client can get wrong, and the handlers that produce it."""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.schemas import ErrorDetail, ErrorResponse

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the client should see, with its status, code and the file it concerns."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        file: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.file = file
        self.headers = headers


def error_response(
    status_code: int,
    code: str,
    message: str,
    file: str | None = None,
    headers: dict[str, str] | None = None,
    *,
    path: str = "",
) -> JSONResponse:
    """The error body; under /v2 the Open Inference Protocol's own `{"error": "..."}`."""
    if path == "/v2" or path.startswith("/v2/"):
        return JSONResponse({"error": message}, status_code=status_code, headers=headers)
    body = ErrorResponse(error=ErrorDetail(code=code, message=message, file=file))
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


# Every error code the API answers with: its status and an example message. The OpenAPI
# examples are generated from this table, and a test sends each case over HTTP and checks that
# the answer is documented here, so the docs and the code cannot drift apart.
ERROR_CODES: dict[str, tuple[int, str]] = {
    "empty_file": (400, "cat.png: the file is empty"),
    "corrupt_image": (400, "cat.png: the file starts like a supported image but cannot be read"),
    "invalid_multipart": (400, "the body ended before the closing boundary"),
    "unauthorized": (401, "missing or wrong X-API-Key header"),
    "upload_timeout": (408, "the request body did not arrive within 60 s"),
    "body_too_large": (413, "the request body exceeds 33554432 bytes (MAX_UPLOAD_BYTES)"),
    "too_many_parts": (413, "more than 64 files in one request (MAX_IMAGES_PER_REQUEST)"),
    "image_too_large": (
        413,
        "huge.png: the image is 50000x50000 = 2500000000 pixels; "
        "the limit is 40000000 (MAX_IMAGE_PIXELS)",
    ),
    "unsupported_media_type": (
        415,
        "send multipart/form-data with 'files' parts, not 'text/plain'",
    ),
    "unsupported_format": (
        415,
        "notes.txt: not an image in a supported format (JPEG, PNG, WEBP, GIF, BMP, TIFF)",
    ),
    "version_not_found": (404, "version 7 is not loaded (loaded: [2])"),
    "invalid_request": (422, "top_k must be between 1 and 10"),
    "missing_files": (422, "send one or more images as multipart/form-data parts named 'files'"),
    "not_ready": (503, "the model is loading or the service is draining"),
    "overloaded": (503, "too many images are waiting; retry shortly"),
    "shutting_down": (503, "the service is shutting down"),
    "timeout": (504, "no answer within REQUEST_TIMEOUT_S (30 s)"),
}
STATUS_DESCRIPTIONS = {
    400: "An upload is empty, corrupt or truncated, or the multipart body is malformed.",
    401: "The API key is missing or wrong.",
    404: "The requested model version is not loaded.",
    408: "The request body did not arrive within UPLOAD_TIMEOUT_S.",
    413: "Too many files, body over MAX_UPLOAD_BYTES, or an image over MAX_IMAGE_PIXELS.",
    415: "Not multipart/form-data, or a file that is not a supported image format.",
    422: "A missing `files` field or a query parameter out of range.",
    503: "The model is not ready, the service is draining, or the queue is full.",
    504: "The request waited longer than REQUEST_TIMEOUT_S.",
}
FILE_ERRORS = {"empty_file", "corrupt_image", "image_too_large", "unsupported_format"}


def error_responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the given error codes: one entry per status, with one
    example per code that status really carries."""
    by_status: dict[int, dict[str, Any]] = {}
    for code in codes:
        status, message = ERROR_CODES[code]
        file = message.split(":", 1)[0] if code in FILE_ERRORS else None
        body = ErrorResponse(error=ErrorDetail(code=code, message=message, file=file))
        by_status.setdefault(status, {})[code] = {"summary": code, "value": body.model_dump()}
    return {
        status: {
            "model": ErrorResponse,
            "description": STATUS_DESCRIPTIONS[status],
            "content": {"application/json": {"examples": examples}},
        }
        for status, examples in sorted(by_status.items())
    }


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(
        exc.status_code, exc.code, exc.message, exc.file, exc.headers, path=request.url.path
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    location = ".".join(str(part) for part in first.get("loc", ()))
    message = f"{location}: {first.get('msg', 'invalid')}"
    return error_response(422, "invalid_request", message, path=request.url.path)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 413:
        return error_response(
            413,
            "body_too_large",
            "the request body exceeds MAX_UPLOAD_BYTES",
            path=request.url.path,
        )
    code = {
        404: "not_found",
        405: "method_not_allowed",
        408: "upload_timeout",
        503: "overloaded",
    }.get(exc.status_code, "http_error")
    return error_response(
        exc.status_code, code, str(exc.detail), headers=exc.headers, path=request.url.path
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Never leak a stack trace or a path; the log has the details.
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error", path=request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
