"""Writes the hostile-upload corpus into tests/fixtures/hostile/ (small files only).

    python -m tests.hostile.make_corpus

Each file's expected answer is in EXPECTED: 200 (a prediction) or the 4xx error code.
Huge inputs (a 60 MB body, 2,000 parts) are built by the tests at run time instead.
"""

import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "hostile"

# file name -> expected status, or (status, error code)
EXPECTED: dict[str, int | tuple[int, str]] = {
    "bomb_png_20000x20000.png": (413, "image_too_large"),
    "bomb_gif_65535x65535.gif": (413, "image_too_large"),
    "bomb_jpeg_65000x65000.jpg": (413, "image_too_large"),
    "truncated.jpg": (400, "corrupt_image"),
    "truncated.png": (400, "corrupt_image"),
    "bad_crc.png": (400, "corrupt_image"),
    "png_named.jpg": 200,
    "text.jpg": (415, "unsupported_format"),
    "page.jpg": (415, "unsupported_format"),
    "xxe.svg": (415, "unsupported_format"),
    "xxe_svg_named.jpg": (415, "unsupported_format"),
    "doc.jpg": (415, "unsupported_format"),
    "archive.jpg": (415, "unsupported_format"),
    "program.jpg": (415, "unsupported_format"),
    "photo.heic": (415, "unsupported_format"),
    "photo.avif": (415, "unsupported_format"),
    "animated_1000_frames.gif": 200,
    "grey_16bit.png": 200,
    "cmyk.jpg": 200,
    "cmyk.tiff": 200,
    "palette_alpha.png": 200,
    "one_pixel.png": 200,
    "one_by_10000.png": 200,
    "empty.png": (400, "empty_file"),
}


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a few zero rows of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * min(width, 4096)) * 4, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


def gif_bomb() -> bytes:
    """A GIF with a 65535x65535 logical screen holding one 1x1 image."""
    screen = b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x80\x00\x00" + b"\x00" * 6
    image = b"\x2c" + struct.pack("<HHHH", 0, 0, 1, 1) + b"\x00" + b"\x02\x02\x44\x01\x00"
    return screen + image + b"\x3b"


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG with its SOF0 dimensions rewritten."""
    data = bytearray(_encode(Image.new("RGB", (8, 8), "red"), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def corpus() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    jpeg, png = _encode(noise, "JPEG"), _encode(noise, "PNG")
    bad_crc = bytearray(png)
    bad_crc[29:33] = b"\x00\x00\x00\x00"  # the IHDR CRC
    frames = [Image.new("P", (16, 16), i % 256) for i in range(1000)]
    palette_alpha = Image.new("P", (20, 20), 1)
    palette_alpha.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    xxe = (
        b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<svg xmlns="http://www.w3.org/2000/svg"><text>&x;</text></svg>'
    )
    zip_bytes = io.BytesIO()
    with zipfile.ZipFile(zip_bytes, "w") as archive:
        archive.writestr(zipfile.ZipInfo("a.txt", date_time=(2026, 1, 1, 0, 0, 0)), "hello")
    return {
        "bomb_png_20000x20000.png": png_bomb(20000, 20000),
        "bomb_gif_65535x65535.gif": gif_bomb(),
        "bomb_jpeg_65000x65000.jpg": jpeg_claiming(65000, 65000),
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "bad_crc.png": bytes(bad_crc),
        "png_named.jpg": png,
        "text.jpg": b"Hello, this is plain text.\n" * 10,
        "page.jpg": b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>",
        "xxe.svg": xxe,
        "xxe_svg_named.jpg": xxe,
        "doc.jpg": b"%PDF-1.7\n1 0 obj<</Type/Catalog>>endobj\ntrailer<<>>\n%%EOF",
        "archive.jpg": zip_bytes.getvalue(),
        "program.jpg": b"\x7fELF\x02\x01\x01\x00"
        + b"\x00" * 8
        + b"\x02\x00\x3e\x00"
        + b"\x00" * 44,
        "photo.heic": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 40,
        "photo.avif": b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 40,
        "animated_1000_frames.gif": _encode(
            frames[0], "GIF", save_all=True, append_images=frames[1:]
        ),
        "grey_16bit.png": _encode(Image.new("I;16", (40, 30), 40000), "PNG"),
        "cmyk.jpg": _encode(Image.new("CMYK", (40, 30), (0, 200, 200, 0)), "JPEG"),
        "cmyk.tiff": _encode(Image.new("CMYK", (40, 30), (0, 200, 200, 0)), "TIFF"),
        "palette_alpha.png": _encode(palette_alpha, "PNG", transparency=0),
        "one_pixel.png": _encode(Image.new("RGB", (1, 1), "blue"), "PNG"),
        "one_by_10000.png": _encode(Image.new("RGB", (1, 10000), "green"), "PNG"),
        "empty.png": b"",
    }


def main() -> None:
    CORPUS.mkdir(parents=True, exist_ok=True)
    files = corpus()
    assert set(files) == set(EXPECTED)
    for name, data in files.items():
        (CORPUS / name).write_bytes(data)
    print(f"wrote {len(files)} files to {CORPUS}")


if __name__ == "__main__":
    main()
