"""The steps every inference route shares: uploads -> model input -> batcher -> probabilities.

/predict, /explain and /v2's infer all go through here, so an upload is decoded, refused, timed
out and answered the same way whichever route it was sent to.
"""

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import numpy as np
from fastapi import Query, Request
from PIL import Image

from app.batcher import Batcher, BatcherClosed, QueueFull
from app.contract import Views
from app.errors import ApiError
from app.model import Classifier
from app.preprocessing import (
    CorruptImage,
    EmptyImage,
    ImageRejected,
    ImageTooLarge,
    UnsupportedImage,
    open_image,
    to_model_input,
)
from app.schemas import LabelProbability, Prediction
from app.uploads import Upload

# Above this many pixels a decode holds a full-size image in memory (JPEGs never: they decode at
# 1/2..1/8 scale), so only a few run at once, whatever the threads.
FULL_SIZE_DECODE_PIXELS = 4_000_000
MAX_FILENAME_CHARS = 255
_REJECTION_STATUS: dict[type[ImageRejected], int] = {
    EmptyImage: 400,
    CorruptImage: 400,
    UnsupportedImage: 415,
    ImageTooLarge: 413,
}


class DecodePool:
    """Threads that open and decode every upload: none is parsed on the event loop, whose stall
    would be every request's (a TIFF's tags or a PNG's text chunks can take seconds).

    Every CPU may decode (a process can take the CPU another leaves idle), but at most
    `full_size` images decode at full size at once: their pixels are what decoding costs in
    memory, so that bound is what MAX_IMAGE_PIXELS times the CPUs per process allows.
    """

    def __init__(self, threads: int, full_size: int) -> None:
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="decode")
        self._full_size = asyncio.Semaphore(full_size)

    async def decode(self, data: bytes, max_pixels: int, size: int) -> np.ndarray:
        """Open the upload in a thread and, unless it decodes at full size, decode it there
        too; a full-size decode waits for its place first."""
        opened = functools.partial(_open_and_decode_small, data, max_pixels, size)
        result = await asyncio.wrap_future(self.executor.submit(opened))
        if isinstance(result, np.ndarray):
            return result
        return await self._decode_full_size(result, size)

    async def _decode_full_size(self, image: Image.Image, size: int) -> np.ndarray:
        decode = functools.partial(to_model_input, image, size=size)
        await self._full_size.acquire()
        running = self.executor.submit(decode)
        # Released when the thread is done, not when this coroutine is: a request cancelled
        # mid-decode still holds its pixels until the thread lets go of them.
        loop = asyncio.get_running_loop()
        running.add_done_callback(lambda _: loop.call_soon_threadsafe(self._full_size.release))
        return await asyncio.wrap_future(running)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)


class Slots:
    """At most `running` requests at once and `waiting` in line; past that a 503 at once. For a
    route whose requests cost many model inputs each (/explain: 50 per image), so that a few
    clients of it cannot fill the batcher and starve every other route."""

    def __init__(self, running: int, waiting: int, route: str) -> None:
        self._running = asyncio.Semaphore(running)
        self._waiting, self._most_waiting, self._route = 0, waiting, route

    @property
    def waiting(self) -> int:
        return self._waiting

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        if self._running.locked() and self._waiting >= self._most_waiting:
            raise ApiError(
                503,
                "overloaded",
                f"too many {self._route} requests are running or waiting; retry shortly",
                headers={"Retry-After": "1"},
            )
        self._waiting += 1
        try:
            await self._running.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._running.release()


def filenames(files: Sequence[Upload]) -> list[str]:
    """The names answers and errors carry: as sent, cut to MAX_FILENAME_CHARS."""
    return [upload.filename[:MAX_FILENAME_CHARS] for upload in files]


TopK = Annotated[
    int | None,
    Query(
        description="How many labels to rank per image (1..number of labels).",
        json_schema_extra={"minimum": 1},  # the maximum comes from the loaded model
    ),
]


UncertainBelow = Annotated[
    float | None,
    Query(
        ge=0,
        le=1,
        description="Flag answers whose confidence is below this as `uncertain` (default: the "
        "UNCERTAIN_BELOW setting, else the model version's own, chosen on its test set).",
    ),
]


ViewsAsked = Annotated[
    Views | None,
    Query(
        description="Test-time views: `auto` computes one view and adds the other five only "
        "for images the model is unsure of (cifar10/3: 1.5 to 1.6 network passes per image on "
        "its test set), `one` one pass per image (fastest; cifar10/3 0.7 points less "
        "accurate), `all` every view (six passes). Default: the VIEWS setting (auto). A "
        "version without adaptive views serves its fixed views and answers `views: fixed`.",
    ),
]


def resolve_views(asked: Views | None, setting: Views, classifier: Classifier) -> Views | None:
    """The views that answer: the request's, else the setting; None for a version whose
    views are fixed."""
    if not classifier.adaptive:
        return None
    return asked or setting


def resolve_uncertain_below(asked: float | None, setting: float | None, own: float) -> float:
    """The request's threshold, else the service's setting, else the version's own."""
    if asked is not None:
        return asked
    return own if setting is None else setting


def resolve_top_k(top_k: int | None, labels: int, default: int) -> int:
    """The query's `top_k` checked against the loaded model's labels, else the default."""
    if top_k is not None and not 1 <= top_k <= labels:
        raise ApiError(422, "invalid_request", f"top_k must be between 1 and {labels}")
    return top_k or min(default, labels)


async def decode_all(
    files: Sequence[Upload],
    names: Sequence[str],
    classifier: Classifier,
    max_pixels: int,
    pool: DecodePool,
) -> np.ndarray:
    """Decode every upload in the pool; the first bad file fails the request."""
    if not files:
        raise ApiError(400, "invalid_request", "no images: a batch must hold at least one")
    decodes = [pool.decode(upload.data, max_pixels, classifier.height) for upload in files]
    if len(decodes) == 1:  # the common case: no task to create
        results: list[np.ndarray | BaseException] = []
        try:
            results.append(await decodes[0])
        except Exception as exc:
            results.append(exc)
    else:
        results = await asyncio.gather(*decodes, return_exceptions=True)
    for name, result in zip(names, results, strict=True):
        if isinstance(result, ImageRejected):
            status = _REJECTION_STATUS.get(type(result), 400)
            raise ApiError(status, result.code, f"{name or 'file'}: {result}", file=name)
        if isinstance(result, BaseException):
            raise result
    return np.stack(results)  # type: ignore[arg-type]


def _open_and_decode_small(data: bytes, max_pixels: int, size: int) -> np.ndarray | Image.Image:
    """In a decode thread: the model input, or the opened image when it would decode at full
    size (JPEGs never do: they decode at 1/2..1/8 scale)."""
    image = open_image(data, max_pixels=max_pixels)
    if image.format == "JPEG" or image.width * image.height <= FULL_SIZE_DECODE_PIXELS:
        return to_model_input(image, size=size)
    return image


async def classify(
    gone: Coroutine[Any, Any, None] | None,
    batcher: Batcher,
    images: Coroutine[Any, Any, np.ndarray],
    deadline: float,
    limit_s: float,
    model_input: Callable[[np.ndarray], np.ndarray] | None = None,
    views_below: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode, queue and await the model: the request's images and the model's answer.

    All of it races the deadline (the event loop's clock; 504 naming `limit_s`) and `gone`,
    which returns when the client goes away (499; HTTP: `disconnected`; gRPC cancels the call
    itself). What has not started by then is dropped: decodes still waiting for a
    thread or for a full-size place, and a batch not yet computed. A decode already running
    finishes in its thread (threads cannot be stopped); the image limits bound it.
    """
    work = asyncio.ensure_future(_decode_and_infer(batcher, images, model_input, views_below))
    watch = asyncio.ensure_future(gone) if gone is not None else None
    timeout = max(deadline - asyncio.get_running_loop().time(), 0)
    try:
        done, _ = await asyncio.wait(
            {work} if watch is None else {work, watch},
            timeout=timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        if watch is not None:
            watch.cancel()
        if not work.done():
            work.cancel()  # drops the decodes and the batch not started, before we answer
            await asyncio.wait({work})
    if work in done:
        return work.result()
    if watch in done:
        raise ApiError(499, "client_closed_request", "the client closed the connection")
    raise ApiError(504, "timeout", f"no answer within REQUEST_TIMEOUT_S ({limit_s:g} s)")


async def _decode_and_infer(
    batcher: Batcher,
    images: Coroutine[Any, Any, np.ndarray],
    model_input: Callable[[np.ndarray], np.ndarray] | None,
    views_below: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    with batcher.incoming():  # the batcher may wait a little for these images
        decoded = await images
        inputs = decoded if model_input is None else model_input(decoded)
        future = _submit(batcher, inputs, views_below)
    return decoded, await future  # cancelling this task cancels the batch if not started


def _submit(
    batcher: Batcher, images: np.ndarray, views_below: float | None
) -> asyncio.Future[np.ndarray]:
    """Queue the images as one request; a full queue or a draining batcher is a 503."""
    try:
        return batcher.submit(images, views_below)
    except QueueFull:
        raise ApiError(
            503,
            "overloaded",
            "too many images are waiting; retry shortly",
            headers={"Retry-After": "1"},
        ) from None
    except BatcherClosed:
        raise ApiError(
            503, "shutting_down", "the service is shutting down", headers={"Retry-After": "1"}
        ) from None


async def disconnected(request: Request) -> None:
    """Returns when the client disconnects; the body has been read, so nothing else arrives."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def prediction(
    name: str, row: np.ndarray, labels: Sequence[str], k: int, uncertain_below: float
) -> Prediction:
    """One image's answer: the best label, the k best, every label's probability, and whether
    the model is too unsure of it to be trusted."""
    order = np.argsort(row)[::-1]
    best = int(order[0])
    return Prediction(
        filename=name,
        label=labels[best],
        confidence=float(row[best]),
        uncertain=bool(row[best] < uncertain_below),
        top_k=[LabelProbability(label=labels[i], probability=float(row[i])) for i in order[:k]],
        probabilities={label: float(p) for label, p in zip(labels, row, strict=True)},
    )
