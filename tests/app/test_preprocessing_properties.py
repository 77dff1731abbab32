"""Property-based: any image Pillow can write, in any mode and size within limits, becomes
exactly a (32, 32, 3) uint8 array; any bytes at all are either that or a clean rejection."""

import io

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from app.preprocessing import ImageRejected, decode_image

MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I", "F"]
FORMATS = ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]
MAX_PIXELS = 300 * 300


@st.composite
def written_images(draw: st.DrawFn) -> bytes:
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(FORMATS))
    width, height = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    if mode == "I;16":
        image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)  # 16-bit grey
    else:
        image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError, TypeError):
        assume(False)  # Pillow cannot write this mode in this format
    return buffer.getvalue()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(written_images())
def test_any_writable_image_becomes_model_input(data: bytes) -> None:
    array = decode_image(data, max_pixels=MAX_PIXELS)

    assert array.shape == (32, 32, 3)
    assert array.dtype == np.uint8


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_decoded_or_cleanly_rejected(data: bytes) -> None:
    try:
        array = decode_image(data, max_pixels=MAX_PIXELS)
    except ImageRejected:
        return
    assert array.shape == (32, 32, 3) and array.dtype == np.uint8


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(written_images(), st.data())
def test_corrupted_images_are_decoded_or_cleanly_rejected(data: bytes, draw: st.DataObject) -> None:
    cut = draw.draw(st.integers(0, len(data)))
    flip = draw.draw(st.integers(0, max(len(data) - 1, 0)))
    mangled = bytearray(data[:cut] if draw.draw(st.booleans()) else data)
    if mangled:
        mangled[min(flip, len(mangled) - 1)] ^= 0xFF
    try:
        array = decode_image(bytes(mangled), max_pixels=MAX_PIXELS)
    except ImageRejected:
        return
    assert array.shape == (32, 32, 3) and array.dtype == np.uint8
