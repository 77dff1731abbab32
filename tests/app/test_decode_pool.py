"""The decode pool: every thread may decode, but full-size decodes, whose pixels are the memory a
decode costs, run only `full_size` at once; JPEGs, decoded at a reduced scale, are not held."""

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import pytest

from app import serving
from app.preprocessing import decode_image
from app.serving import FULL_SIZE_DECODE_PIXELS, DecodePool
from tests.conftest import image_bytes, until

pytestmark = pytest.mark.anyio
MAX_PIXELS = 40_000_000
BIG = (2500, 2000)  # 5 megapixels, above FULL_SIZE_DECODE_PIXELS


JOIN_WAIT_S = 2.0  # how long a lone decode waits for another to join it


class Decodes:
    """Counts the real decodes running at once. The first decode after `reset` waits (an event,
    up to JOIN_WAIT_S) for a second one to join it: where two may run at once they meet at once;
    where only one may, the first goes on alone after the wait. No sleep decides an outcome."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self._lock = threading.Lock()
        self._joined = threading.Event()
        self._led = False

    def reset(self) -> None:
        self.most, self._led = 0, False
        self._joined.clear()

    def around(self, decode: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        def counted(*args, **kwargs) -> np.ndarray:
            with self._lock:
                self.now += 1
                self.most = max(self.most, self.now)
                if self.now > 1:
                    self._joined.set()
                lead, self._led = not self._led, True
            try:
                if lead:
                    self._joined.wait(JOIN_WAIT_S)
                return decode(*args, **kwargs)
            finally:
                with self._lock:
                    self.now -= 1

        return counted


@pytest.fixture
def in_flight(monkeypatch: pytest.MonkeyPatch) -> Decodes:
    decodes = Decodes()
    monkeypatch.setattr(serving, "to_model_input", decodes.around(serving.to_model_input))
    return decodes


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

    assert in_flight.most == 1
    expected = decode_image(png, max_pixels=MAX_PIXELS)
    assert all(np.array_equal(array, expected) for array in arrays)


async def test_jpegs_and_smaller_images_use_every_thread(in_flight) -> None:
    pool = DecodePool(threads=4, full_size=1)
    try:
        await decode_four(pool, image_bytes("JPEG", size=BIG))
        jpeg_most = in_flight.most
        in_flight.reset()
        await decode_four(pool, image_bytes("PNG", size=(1000, 1000)))
    finally:
        pool.shutdown()

    assert jpeg_most > 1
    assert in_flight.most > 1


async def test_a_cancelled_full_size_decode_holds_its_place_until_its_thread_is_done(
    in_flight,
) -> None:
    """A request that goes away mid-decode frees no memory until the thread lets go of it."""
    png = image_bytes("PNG", size=BIG)
    pool = DecodePool(threads=4, full_size=1)
    try:
        first = asyncio.ensure_future(pool.decode(png, MAX_PIXELS, 32))
        await until(lambda: in_flight.now == 1, "the first decode never started")
        first.cancel()
        await pool.decode(png, MAX_PIXELS, 32)
    finally:
        pool.shutdown()

    assert first.cancelled()
    assert in_flight.most == 1
