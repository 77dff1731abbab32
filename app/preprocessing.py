"""Bytes in, a 32x32x3 uint8 RGB array out: decoding, orientation, colour and size, nothing else.

Scaling and normalisation live inside the exported model (docs/model-contract.md), so this
module only turns any supported upload into the raw pixels the model's signature takes.

Colour rule (one rule for every mode):
- modes with transparency (RGBA, LA, PA, P or L with a transparency key) are composited over a
  white background;
- 16- and 32-bit integer grey (I;16*, I) is read as 0..65535 and scaled to 0..255;
  32-bit float grey (F) is read as 0..1 and scaled to 0..255; values outside are clipped;
- every other mode (1, L, P, CMYK, YCbCr, LAB, HSV, RGBX...) is converted by Pillow.
"""

import io
import warnings
from typing import ClassVar, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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
# Chosen by benchmarks/preprocessing_accuracy.py (see README): best accuracy of the shipped model.
DEFAULT_RESAMPLE: Resample = "box"
DEFAULT_FIT: Fit = "squash"


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
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptImage(f"the image header cannot be read ({exc})") from None
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
    return image


def to_model_input(
    image: Image.Image,
    *,
    resample: Resample = DEFAULT_RESAMPLE,
    fit: Fit = DEFAULT_FIT,
    size: int = MODEL_SIZE,
) -> np.ndarray:
    """Decode an opened image into a (size, size, 3) uint8 RGB array; closes the image."""
    with image:
        rgb = load_rgb(image)
    if fit == "crop":
        resized = ImageOps.fit(rgb, (size, size), method=_RESAMPLE[resample])
    else:
        resized = rgb.resize((size, size), _RESAMPLE[resample], reducing_gap=3.0)
    return np.asarray(resized, dtype=np.uint8)


def load_rgb(image: Image.Image) -> Image.Image:
    """Decode pixels (JPEGs at a reduced DCT scale), apply EXIF orientation, convert to RGB."""
    try:
        if image.format == "JPEG":
            image.draft(image.mode, _draft_size(image.size, JPEG_DRAFT_MIN_SIDE))
        image.load()
        return _to_rgb(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise CorruptImage(f"the image data cannot be decoded ({exc})") from None


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
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _grey_to_rgb(unit: np.ndarray) -> Image.Image:
    grey = np.round(np.nan_to_num(unit) * 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
