"""Reading the `files` parts of a multipart/form-data body into memory, with limits.

Starlette's form parser gives every part a SpooledTemporaryFile and an UploadFile, and FastAPI
then validates the form; for a 2 KB image that cost more than decoding it (py-spy under
`python -m benchmarks.run`). The body is already capped by MAX_UPLOAD_BYTES (`limits.py`) and
every image is read whole before decoding anyway, so the parts are kept as bytes, parsed by
python-multipart, the parser Starlette itself uses.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import ApiError

FILES_FIELD = b"files"
MAX_OTHER_FIELDS = 16  # parts not named `files`: ignored, but a body of thousands is refused
MAX_PART_HEADER_BYTES = 8 * 1024
NAMES_REPORTED = 5  # names of other parts quoted in the 422 when no `files` part came


@dataclass
class Upload:
    """One `files` part: its filename as sent and its bytes."""

    filename: str
    data: bytes


@dataclass
class _Part:
    disposition: bytes = b""
    header_name: bytes = b""
    header_value: bytes = b""
    filename: str | None = None  # set for `files` parts only: the others are not kept
    chunks: list[bytes] = field(default_factory=list)


class _Collector:
    """python-multipart callbacks that keep `files` parts and count the others."""

    def __init__(self, max_files: int) -> None:
        self.max_files = max_files
        self.uploads: list[Upload] = []
        self.other_fields = 0
        self.other_names: list[str] = []  # the first few, to name them when `files` is missing
        self.part = _Part()
        self.complete = False  # the closing boundary was seen

    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.part.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.part.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.part.header_name.lower() == b"content-disposition":
            self.part.disposition = self.part.header_value
        self.part.header_name, self.part.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.part.disposition)
        if options.get(b"name") != FILES_FIELD:
            self.other_fields += 1
            if len(self.other_names) < NAMES_REPORTED:
                self.other_names.append(_decode_filename(options.get(b"name", b""))[:64])
            if self.other_fields > MAX_OTHER_FIELDS:
                raise ApiError(
                    413, "too_many_parts", f"more than {MAX_OTHER_FIELDS} parts not named 'files'"
                )
            return
        if len(self.uploads) == self.max_files:
            raise ApiError(
                413,
                "too_many_parts",
                f"more than {self.max_files} files in one request (MAX_IMAGES_PER_REQUEST)",
            )
        self.part.filename = _decode_filename(options.get(b"filename", b""))

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part.filename is not None:
            self.part.chunks.append(data[start:end])

    def on_part_end(self) -> None:
        if self.part.filename is not None:
            self.uploads.append(Upload(self.part.filename, b"".join(self.part.chunks)))

    def on_end(self) -> None:
        self.complete = True


async def read_uploads(
    content_type: str, body: AsyncIterator[bytes], *, max_files: int
) -> list[Upload]:
    """The `files` parts of a multipart body, in order; ApiError (4xx) for a malformed one."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "invalid_multipart", "the multipart Content-Type has no boundary")
    collector = _Collector(max_files)
    try:
        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": collector.on_part_begin,
                "on_header_field": collector.on_header_field,
                "on_header_value": collector.on_header_value,
                "on_header_end": collector.on_header_end,
                "on_headers_finished": collector.on_headers_finished,
                "on_part_data": collector.on_part_data,
                "on_part_end": collector.on_part_end,
                "on_end": collector.on_end,
            },
            max_header_size=MAX_PART_HEADER_BYTES,
        )
        async for chunk in body:
            parser.write(chunk)
    except FormParserError as exc:
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {exc}") from None
    if not collector.complete:
        raise ApiError(400, "invalid_multipart", "the body ended before the closing boundary")
    if not collector.uploads:
        received = ", ".join(repr(name) for name in collector.other_names)
        raise ApiError(
            422,
            "missing_files",
            "send one or more images as multipart/form-data parts named 'files'"
            + (f"; this request's parts were named {received}" if received else ""),
        )
    return collector.uploads


def _decode_filename(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")
