"""Preprocessing: any format and mode becomes a (32, 32, 3) uint8 RGB array by one rule."""

import io

import numpy as np
import pytest
from PIL import Image

from app.preprocessing import (
    MAX_TIFF_TAG_VALUES,
    CorruptImage,
    EmptyImage,
    ImageRejected,
    ImageTooLarge,
    UnsupportedImage,
    decode_image,
    load_oriented,
    open_image,
    to_model_input,
)
from tests.conftest import tiff_directory, tiff_with_strips

MAX = 50_000_000


def encode(image: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def solid(mode: str, value, size=(20, 12)) -> Image.Image:
    return Image.new(mode, size, value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_supported_format_gives_32x32_rgb(fmt: str) -> None:
    array = decode_image(encode(solid("RGB", (200, 30, 30), (64, 48)), fmt), max_pixels=MAX)

    assert array.shape == (32, 32, 3) and array.dtype == np.uint8
    # Lossy formats and GIF's palette move colours a little, not a lot.
    assert np.abs(array.astype(int) - (200, 30, 30)).max() <= 12


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("1", 1, (255, 255, 255)),
        ("L", 100, (100, 100, 100)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 32896, (128, 128, 128)),
        ("I", 70000, (255, 255, 255)),
        ("I", 0, (0, 0, 0)),
        ("I", 32896, (128, 128, 128)),
        ("F", 0.5, (128, 128, 128)),
        ("F", 7.0, (255, 255, 255)),
        ("F", 1.5, (255, 255, 255)),
        ("F", -0.5, (0, 0, 0)),
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("RGBA", (10, 20, 30, 0), (255, 255, 255)),
        ("LA", (0, 0), (255, 255, 255)),
    ],
)
def test_every_mode_follows_the_colour_rule(mode: str, value, expected) -> None:
    fmt = "TIFF" if mode in ("CMYK", "I", "F", "I;16", "LA") else "PNG"
    array = decode_image(encode(solid(mode, value), fmt), max_pixels=MAX)

    assert array.shape == (32, 32, 3)
    np.testing.assert_allclose(array.reshape(-1, 3).mean(axis=0), expected, atol=1)


@pytest.mark.parametrize("mode", ["LA", "PA", "RGBa", "La"])
def test_every_alpha_mode_is_blended_over_white(mode: str) -> None:
    """Modes a decoder can hand over with alpha, premultiplied ones included: black at half
    opacity is mid grey, at none it is the background."""
    for alpha, expected in ((0, 255), (128, 127)):
        image = (
            Image.frombytes("La", (40, 40), bytes([0, alpha]) * 1600)  # Pillow cannot convert to it
            if mode == "La"
            else Image.new("RGBA", (40, 40), (0, 0, 0, alpha)).convert(mode)
        )
        array = to_model_input(image)
        np.testing.assert_allclose(array.reshape(-1, 3).mean(axis=0), [expected] * 3, atol=1)


def test_half_transparent_alpha_is_blended_over_white() -> None:
    array = decode_image(encode(solid("RGBA", (0, 0, 0, 128)), "PNG"), max_pixels=MAX)

    np.testing.assert_allclose(array[0, 0], (127, 127, 127), atol=1)


def test_palette_with_transparency_composites_over_white() -> None:
    image = solid("P", 0)
    image.putpalette([0, 0, 255] + [0] * 765)
    array = decode_image(encode(image, "PNG", transparency=0), max_pixels=MAX)

    assert (array == 255).all()


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [solid("RGB", colour, (40, 40)) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])

    array = decode_image(data, max_pixels=MAX)

    assert array[..., 0].min() > 240 and array[..., 2].max() < 15


def test_exif_orientation_is_applied() -> None:
    # Stored landscape: left half red, right half blue. Orientation 6 means "rotate 90 CW to view",
    # so the viewer sees red on top and blue at the bottom.
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, :40] = (255, 0, 0)
    pixels[:, 40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(pixels), "PNG", exif=exif)

    array = decode_image(data, max_pixels=MAX)

    assert array[2, 16, 0] > 200 and array[2, 16, 2] < 50  # top: red
    assert array[29, 16, 2] > 200 and array[29, 16, 0] < 50  # bottom: blue


def test_large_jpeg_is_decoded_at_reduced_scale() -> None:
    photo = Image.fromarray(np.full((3000, 4000, 3), 90, dtype=np.uint8))
    image = open_image(encode(photo, "JPEG", quality=80), max_pixels=MAX)

    decoded = load_oriented(image)

    assert decoded.size == (500, 375)  # 1/8 DCT scale: never 12 megapixels in memory


def test_extreme_aspect_ratios_still_give_32x32() -> None:
    for size in [(1, 1), (1, 10000), (10000, 1)]:
        array = decode_image(encode(solid("RGB", (5, 6, 7), size), "PNG"), max_pixels=MAX)
        assert array.shape == (32, 32, 3)


def test_rejections_are_specific() -> None:
    png = encode(solid("RGB", (1, 2, 3), (100, 100)), "PNG")
    with pytest.raises(EmptyImage):
        decode_image(b"", max_pixels=MAX)
    with pytest.raises(UnsupportedImage):
        decode_image(b"not a GIF89a at all", max_pixels=MAX)
    with pytest.raises(CorruptImage):  # starts like a GIF, is not one
        decode_image(b"GIF89a but not really", max_pixels=MAX)
    with pytest.raises(UnsupportedImage):  # a real image in a format we do not serve
        decode_image(encode(solid("RGB", (1, 2, 3)), "PPM"), max_pixels=MAX)
    # The decoder's own words come with it: what broke, not only that something did.
    with pytest.raises(CorruptImage, match=r"cannot be decoded \(OSError: .*truncated"):
        decode_image(png[:-30], max_pixels=MAX)
    with pytest.raises(ImageTooLarge):
        open_image(png, max_pixels=99 * 100)


def test_an_image_too_large_once_decoded_is_refused_from_its_header() -> None:
    """Under MAX_IMAGE_PIXELS, but 4 bytes a pixel over MAX_DECODED_BYTES: refused unread."""
    from app.preprocessing import MAX_DECODED_BYTES, ImageTooLarge, open_image

    side = int((MAX_DECODED_BYTES / 4) ** 0.5) + 10
    data = io.BytesIO()
    Image.new("RGBA", (side, side)).save(data, "PNG")

    with pytest.raises(ImageTooLarge, match="once decoded"):
        open_image(data.getvalue(), max_pixels=side * side)


@pytest.mark.parametrize("mode", ["I;16", "F", "RGBA"])
def test_wide_modes_are_shrunk_in_their_own_mode_and_keep_their_colour(mode: str) -> None:
    value = {"I;16": 32896, "F": 0.5, "RGBA": (255, 0, 0, 128)}[mode]
    data = io.BytesIO()
    Image.new(mode, (640, 480), value).save(data, "TIFF" if mode != "RGBA" else "PNG")

    array = decode_image(data.getvalue(), max_pixels=10**6)

    expected = {"I;16": (128, 128, 128), "F": (128, 128, 128), "RGBA": (255, 127, 127)}[mode]
    np.testing.assert_allclose(array.reshape(-1, 3), [expected] * 1024, atol=1)


def test_a_tiff_listing_more_strips_than_rows_is_refused_before_pillow_reads_them() -> None:
    assert decode_image(tiff_with_strips(32), max_pixels=MAX).shape == (32, 32, 3)

    with pytest.raises(CorruptImage, match="StripOffsets"):
        open_image(tiff_with_strips(MAX_TIFF_TAG_VALUES + 1), max_pixels=MAX)


@pytest.mark.parametrize("layout", ["II", "MM", "II+", "MM+"])
@pytest.mark.parametrize(
    ("tag", "name"),
    [
        (273, "StripOffsets"),
        (279, "StripByteCounts"),
        (324, "TileOffsets"),
        (325, "TileByteCounts"),
    ],
)
def test_the_strip_and_tile_guard_reads_every_tiff_layout(layout: str, tag: int, name: str):
    """Classic and BigTIFF, both byte orders: one value past the limit is refused by name
    before Pillow parses the directory; at the limit the guard lets Pillow judge the file."""
    # One past the limit, and a count that reads as negative if taken as signed.
    for over in (MAX_TIFF_TAG_VALUES + 1, 2 ** (63 if layout.endswith("+") else 31) + 1):
        with pytest.raises(CorruptImage, match=f"lists {over} {name}; at most"):
            open_image(tiff_directory(layout, tag, over), max_pixels=MAX)

    with pytest.raises(ImageRejected) as at_limit:  # this bare directory is no image either way
        open_image(tiff_directory(layout, tag, MAX_TIFF_TAG_VALUES), max_pixels=MAX)
    assert "at most" not in str(at_limit.value)
