"""The decode pool: every thread may decode, but full-size decodes, whose pixels are the memory a
decode costs, run only `full_size` at once; JPEGs, decoded at a reduced scale, are not held."""

import asyncio
import threading
import time

import numpy as np
import pytest

from app import serving
from app.preprocessing import decode_image
from app.serving import FULL_SIZE_DECODE_PIXELS, DecodePool
from tests.conftest import image_bytes, until

pytestmark = pytest.mark.anyio
MAX_PIXELS = 40_000_000
BIG = (2500, 2000)  # 5 megapixels, above FULL_SIZE_DECODE_PIXELS


@pytest.fixture
def in_flight(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the real decodes running at once (the most seen), each held a little."""
    seen = {"now": 0, "most": 0}
    lock = threading.Lock()
    real = serving.to_model_input

    def counted(*args, **kwargs) -> np.ndarray:
        with lock:
            seen["now"] += 1
            seen["most"] = max(seen["most"], seen["now"])
        try:
            time.sleep(0.05)  # time for another thread to start, if it may
            return real(*args, **kwargs)
        finally:
            with lock:
                seen["now"] -= 1

    monkeypatch.setattr(serving, "to_model_input", counted)
    return seen


async def decode_four(pool: DecodePool, data: bytes) -> list[np.ndarray]:
    return await asyncio.gather(*(pool.decode(data, MAX_PIXELS, 32) for _ in range(4)))


async def test_full_size_decodes_wait_for_each_other_whatever_the_threads(in_flight) -> None:
    assert BIG[0] * BIG[1] > FULL_SIZE_DECODE_PIXELS
    png = image_bytes("PNG", size=BIG)
    pool = DecodePool(threads=4, full_size=1)
    try:
        arrays = await decode_four(pool, png)
    finally:
        pool.shutdown()

    assert in_flight["most"] == 1
    expected = decode_image(png, max_pixels=MAX_PIXELS)
    assert all(np.array_equal(array, expected) for array in arrays)


async def test_jpegs_and_smaller_images_use_every_thread(in_flight) -> None:
    pool = DecodePool(threads=4, full_size=1)
    try:
        await decode_four(pool, image_bytes("JPEG", size=BIG))
        jpeg_most = in_flight["most"]
        in_flight["most"] = 0
        await decode_four(pool, image_bytes("PNG", size=(1000, 1000)))
    finally:
        pool.shutdown()

    assert jpeg_most > 1
    assert in_flight["most"] > 1


async def test_a_cancelled_full_size_decode_holds_its_place_until_its_thread_is_done(
    in_flight,
) -> None:
    """A request that goes away mid-decode frees no memory until the thread lets go of it."""
    png = image_bytes("PNG", size=BIG)
    pool = DecodePool(threads=4, full_size=1)
    try:
        first = asyncio.ensure_future(pool.decode(png, MAX_PIXELS, 32))
        await until(lambda: in_flight["now"] == 1, "the first decode never started")
        first.cancel()
        await pool.decode(png, MAX_PIXELS, 32)
    finally:
        pool.shutdown()

    assert first.cancelled()
    assert in_flight["most"] == 1
