"""Bytes in, a 32x32x3 uint8 RGB array out: decoding, orientation, colour and size, nothing else.

Scaling and normalisation live inside the exported model (docs/model-contract.md), so this
module only turns any supported upload into the raw pixels the model's signature takes.

Colour rule (one rule for every mode):
- modes with transparency (RGBA, LA, PA, P or L with a transparency key) are composited over a
  white background;
- 16- and 32-bit integer grey (I;16*, I) is read as 0..65535 and scaled to 0..255;
  32-bit float grey (F) is read as 0..1 and scaled to 0..255; values outside are clipped;
- every other mode (1, L, P, CMYK, YCbCr, LAB, HSV, RGBX...) is converted by Pillow.

Bounded work for any bytes: an image whose decoded pixels would take more than
MAX_DECODED_BYTES is refused from its header; 16-bit, float and transparent images are shrunk to
the model's size in their own mode before anything else is made of them (a wider copy of a
full-size 16-bit image once cost 1.2 GB); a TIFF listing more strips or tiles than
MAX_TIFF_TAG_VALUES, or a PNG carrying more text than MAX_PNG_TEXT_BYTES, is refused before
Pillow reads it all; and any exception a decoder raises is a corrupt image, never a 500.
"""

import io
import struct
import warnings
from typing import ClassVar, Literal

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Leading bytes of those formats (BMP's "BM" is too weak to count): a file that starts like
# one but will not open is corrupt, not of an unsupported type.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")
BACKGROUND = (255, 255, 255)
MODEL_SIZE = 32
# JPEGs are decoded at the smallest DCT scale (1/2..1/8) that still leaves this many pixels on
# the short side, so a 12-megapixel photo is never decoded at full size.
JPEG_DRAFT_MIN_SIDE = 4 * MODEL_SIZE

Resample = Literal["nearest", "box", "bilinear", "hamming", "bicubic", "lanczos"]
Fit = Literal["squash", "crop"]
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# Chosen by benchmarks/preprocessing_accuracy.py (docs/model-card.md): best accuracy of the
# shipped model.
DEFAULT_RESAMPLE: Resample = "box"
DEFAULT_FIT: Fit = "squash"

# Pillow's bytes per pixel by mode, for the decoded size read from the header (4 for the rest).
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "LA": 4, "PA": 4}
# Decoding takes about twice the decoded bytes at its peak (2.2x for WebP, measured), and a
# process decodes up to one full-size image per CPU at once: 64 MiB is 16 megapixels of RGB or
# RGBA (a 4K screenshot is 8), 32 of 16-bit grey. JPEGs, decoded at 1/2..1/8 scale, are exempt.
MAX_DECODED_BYTES = 64 * 1024 * 1024
# Modes shrunk to the model's size before conversion: each would be copied wider at full size.
_SHRINK_FIRST = ("I;16", "I;16B", "I;16L", "I", "F", "RGBA", "LA", "RGBa", "La")
# TIFF strips and tiles: a 32x32 image listing 1.5 million of them stalled a process 8-10 s in
# Pillow's tag parsing. 16,384 rows of one strip each is a 40-megapixel image 2,441 wide.
MAX_TIFF_TAG_VALUES = 16_384
_TIFF_OFFSET_TAGS = {
    273: "StripOffsets",
    279: "StripByteCounts",
    324: "TileOffsets",
    325: "TileByteCounts",
}
# PNG text chunks (tEXt, zTXt, iTXt) decompressed per image: Pillow's own limits, tightened from
# 1 MiB per chunk and 64 MiB per image (64 such images took 12 s and stalled /health).
MAX_PNG_TEXT_BYTES = 256 * 1024
PngImagePlugin.MAX_TEXT_CHUNK = MAX_PNG_TEXT_BYTES
PngImagePlugin.MAX_TEXT_MEMORY = MAX_PNG_TEXT_BYTES


class ImageRejected(ValueError):
    """An upload that cannot become model input; `code` is the API error code."""

    code: ClassVar[str] = "invalid_image"


class EmptyImage(ImageRejected):
    code = "empty_file"


class UnsupportedImage(ImageRejected):
    code = "unsupported_format"


class CorruptImage(ImageRejected):
    code = "corrupt_image"


class ImageTooLarge(ImageRejected):
    code = "image_too_large"


def open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Read only the header: identify the format and refuse oversized images before decoding."""
    if not data:
        raise EmptyImage("the file is empty")
    _check_tiff_tags(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        if data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            raise CorruptImage(
                "the file starts like a supported image but cannot be read"
            ) from None
        raise UnsupportedImage(
            "not an image in a supported format (" + ", ".join(SUPPORTED_FORMATS) + ")"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(
            f"the image has more than {max_pixels} pixels (MAX_IMAGE_PIXELS): {exc}"
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # a decoder's parser may raise anything (struct.error, ...)
        raise CorruptImage(f"the image header cannot be read ({_reason(exc)})") from None
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise CorruptImage(f"the image header says {width}x{height} pixels")
    if width * height > max_pixels:
        image.close()
        raise ImageTooLarge(
            f"the image is {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels} (MAX_IMAGE_PIXELS)"
        )
    decoded = width * height * _BYTES_PER_PIXEL.get(image.mode, 4)
    if decoded > MAX_DECODED_BYTES and image.format != "JPEG":  # JPEGs decode scaled down
        image.close()
        raise ImageTooLarge(
            f"the image is {width}x{height} {image.mode}: {decoded} bytes once decoded; the "
            f"limit is {MAX_DECODED_BYTES}"
        )
    return image


def to_model_input(
    image: Image.Image,
    *,
    resample: Resample = DEFAULT_RESAMPLE,
    fit: Fit = DEFAULT_FIT,
    size: int = MODEL_SIZE,
) -> np.ndarray:
    """Decode an opened image into a (size, size, 3) uint8 RGB array; closes the image."""

    def shrink(picture: Image.Image) -> Image.Image:
        if picture.size == (size, size):
            return picture
        if fit == "crop":
            return ImageOps.fit(picture, (size, size), method=_RESAMPLE[resample])
        # Pillow's reduce() has no 16-bit modes; resize alone handles them.
        gap = None if picture.mode.startswith("I;16") else 3.0
        return picture.resize((size, size), _RESAMPLE[resample], reducing_gap=gap)

    with image:
        try:
            oriented = load_oriented(image)
            # Box-averaging premultiplied RGBA, then compositing, equals compositing, then
            # averaging; 16-bit and float average the same in their own precision.
            if oriented.mode in _SHRINK_FIRST:
                oriented = shrink(oriented)
            rgb = shrink(_to_rgb(oriented))
        except MemoryError:
            raise
        except Exception as exc:  # a malformed EXIF block raised struct.error here
            raise CorruptImage(f"the image data cannot be decoded ({_reason(exc)})") from None
    return np.asarray(rgb, dtype=np.uint8)


def load_oriented(image: Image.Image) -> Image.Image:
    """Decode pixels (JPEGs at a reduced DCT scale) and apply EXIF orientation."""
    if image.format == "JPEG":
        image.draft(image.mode, _draft_size(image.size, JPEG_DRAFT_MIN_SIDE))
    image.load()
    return ImageOps.exif_transpose(image)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _check_tiff_tags(data: bytes) -> None:
    """Refuse a TIFF whose first directory lists more strips or tiles than any image under the
    limits needs, before Pillow parses every value in Python."""
    # Classic TIFF: 4-byte offsets and counts, 12-byte entries; BigTIFF: 8-byte, 20-byte entries.
    layouts = {
        b"II*\x00": ("<", "I", "H", "HHI", 4, 12),
        b"MM\x00*": (">", "I", "H", "HHI", 4, 12),
        b"II+\x00": ("<", "Q", "Q", "HHQ", 8, 20),
        b"MM\x00+": (">", "Q", "Q", "HHQ", 8, 20),
    }
    layout = layouts.get(data[:4])
    if layout is None:
        return
    order, offset, number, entry, width, size = layout
    header_end = 8 if width == 4 else 16
    if len(data) < header_end:
        return
    (ifd,) = struct.unpack(order + offset, data[header_end - width : header_end])
    if ifd + width > len(data):
        return  # Pillow reports the broken header
    # Standard sizes (the byte-order prefix): native "HHQ" would pad to 16 bytes.
    counter, head = struct.Struct(order + number), struct.Struct(order + entry)
    (entries,) = counter.unpack_from(data, ifd)
    first = ifd + counter.size
    for index in range(min(entries, 4096)):
        start = first + size * index
        if start + size > len(data):
            return
        tag, _, count = head.unpack_from(data, start)
        if tag in _TIFF_OFFSET_TAGS and count > MAX_TIFF_TAG_VALUES:
            raise CorruptImage(
                f"the TIFF lists {count} {_TIFF_OFFSET_TAGS[tag]}; at most "
                f"{MAX_TIFF_TAG_VALUES} are accepted"
            )


def decode_image(data: bytes, *, max_pixels: int, **options: str) -> np.ndarray:
    """`open_image` then `to_model_input`: the whole preprocessing of one upload."""
    return to_model_input(open_image(data, max_pixels=max_pixels), **options)  # type: ignore[arg-type]


def _draft_size(size: tuple[int, int], min_side: int) -> tuple[int, int]:
    """The draft request that keeps the short side >= min_side at the original aspect ratio."""
    width, height = size
    scale = min_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        grey = np.asarray(image, dtype=np.float64)
        return _grey_to_rgb(np.clip(grey, 0, 65535) / 65535)
    if mode == "F":
        return _grey_to_rgb(np.clip(np.asarray(image, dtype=np.float64), 0, 1))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        # Pillow converts premultiplied grey ("La") to nothing but "LA".
        rgba = (image.convert("LA") if mode == "La" else image).convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _grey_to_rgb(unit: np.ndarray) -> Image.Image:
    grey = np.round(np.nan_to_num(unit) * 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
