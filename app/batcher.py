"""Dynamic batching: concurrent requests share one model call, as in TF Serving and Triton.

Requests wait in a bounded queue (counted in images, so memory is bounded). The batcher takes
the first request and, if other requests are already being decoded (`incoming`), waits at most
`max_batch_delay_ms` for them (up to `max_batch_size` images, never splitting a request); a
lone request is not delayed. Up to `workers` batches run on the model at once, each on its own
inference thread (Triton's instance count, TF Serving's num_batch_threads), and each request's
future gets its own rows. A request cancelled before its batch starts (client gone, timeout)
is dropped without being computed. Each request's images carry its views threshold as a row of
their own, so requests asking for different test-time views still share one model call.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

# (images, views_below) -> probabilities; views_below holds one float per image, NaN for a
# request that asked for nothing (the model's own threshold).
Infer = Callable[[np.ndarray, np.ndarray], np.ndarray]


class QueueFull(Exception):
    """More images are waiting than `max_queue_images`; the caller should retry later."""


class BatcherClosed(Exception):
    """The batcher is draining for shutdown and takes no new work."""


@dataclass
class _Request:
    images: np.ndarray
    future: asyncio.Future[np.ndarray]
    views_below: float
    arrived: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class BatchStats:
    """What one model call did; handed to `on_batch` (metrics, tests)."""

    requests: int
    images: int
    seconds: float


class Batcher:
    def __init__(
        self,
        infer: Infer,
        *,
        max_batch_size: int,
        max_batch_delay_ms: float,
        max_queue_images: int,
        workers: int = 1,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_batch_delay_ms < 0:
            raise ValueError(f"max_batch_delay_ms must be >= 0, got {max_batch_delay_ms}")
        if max_queue_images < max_batch_size:
            raise ValueError(
                f"max_queue_images ({max_queue_images}) must be >= max_batch_size "
                f"({max_batch_size})"
            )
        self._infer = infer
        self._max_batch_size = max_batch_size
        self._max_delay_s = max_batch_delay_ms / 1000
        self._max_queue_images = max_queue_images
        self._on_batch = on_batch
        self._on_queue = on_queue  # told each change of queued images (+ queued, - taken)
        self._queue: asyncio.Queue[_Request | None] = asyncio.Queue()
        self._queued_images = 0
        self._carry: _Request | None = None  # taken from the queue but did not fit the last batch
        self._incoming = 0  # requests being received or decoded that will be submitted soon
        self._closed = False
        self._workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")
        self._worker: asyncio.Task[None] | None = None

    @property
    def queued_images(self) -> int:
        """Images accepted and not yet handed to the model."""
        return self._queued_images

    @property
    def closed(self) -> bool:
        """True once `stop` has begun: new work is refused, queued work still finishes."""
        return self._closed

    @contextmanager
    def incoming(self) -> Iterator[None]:
        """Mark a request that is being prepared, so a forming batch waits for it."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        """Refuse new work, finish everything already queued, then stop the worker."""
        if self._closed:
            return
        self._closed = True
        self._queue.put_nowait(None)
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    def submit(
        self, images: np.ndarray, views_below: float | None = None
    ) -> asyncio.Future[np.ndarray]:
        """Queue one request's images; the future resolves to their probabilities, in order.
        `views_below`: the request's views threshold (Classifier.views_below); None: the
        model's own."""
        count = len(images)
        if self._closed:
            raise BatcherClosed("the service is shutting down")
        if not 1 <= count <= self._max_batch_size:
            raise ValueError(f"a request holds 1..{self._max_batch_size} images, got {count}")
        if self._queued_images + count > self._max_queue_images:
            raise QueueFull(f"{self._queued_images} images are already waiting")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        threshold = np.nan if views_below is None else views_below
        self._queue.put_nowait(_Request(images, future, threshold))
        self._count_queued(count)
        return future

    def _count_queued(self, change: int) -> None:
        self._queued_images += change
        if self._on_queue is not None:
            self._on_queue(change)

    async def _run(self) -> None:
        """Form batches one at a time, each only when a worker is free to take it."""
        free = asyncio.Semaphore(self._workers)
        running: set[asyncio.Task[None]] = set()
        while True:
            await free.acquire()
            batch = await self._next_batch()
            if batch is None:
                break
            task = asyncio.get_running_loop().create_task(self._infer_batch(batch))
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(lambda _: free.release())
        await asyncio.gather(*running)

    async def _next_batch(self) -> list[_Request] | None:
        """Block for the first request, then gather more until size or deadline; None at stop."""
        if self._carry is not None:
            first, self._carry = self._carry, None
        else:
            first = await self._queue.get()
            if first is None:
                return None
            self._count_queued(-len(first.images))
        batch, size = [first], len(first.images)
        deadline = first.arrived + self._max_delay_s
        while size < self._max_batch_size:
            timeout = deadline - time.monotonic()
            try:
                if not self._queue.empty():
                    request = self._queue.get_nowait()
                elif timeout > 0 and self._incoming > 0:
                    request = await asyncio.wait_for(self._queue.get(), timeout)
                else:
                    break
            except TimeoutError:
                break
            if request is None:  # stop: finish this batch, then end
                self._queue.put_nowait(None)
                break
            self._count_queued(-len(request.images))
            if size + len(request.images) > self._max_batch_size:
                self._carry = request
                break
            batch.append(request)
            size += len(request.images)
        return batch

    async def _infer_batch(self, batch: list[_Request]) -> None:
        batch = [request for request in batch if not request.future.done()]
        if not batch:
            return
        images = np.concatenate([request.images for request in batch])
        views_below = np.concatenate(
            [np.full(len(request.images), request.views_below, np.float32) for request in batch]
        )
        started = time.monotonic()
        try:
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self._executor, self._infer, images, views_below)
            if len(outputs) != len(images):
                raise RuntimeError(f"model returned {len(outputs)} rows for {len(images)} images")
        except Exception as exc:
            logger.exception("inference failed for a batch of %d images", len(images))
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        seconds = time.monotonic() - started
        offset = 0
        for request in batch:
            rows = outputs[offset : offset + len(request.images)]
            offset += len(request.images)
            if not request.future.done():
                request.future.set_result(rows)
        if self._on_batch is not None:
            try:
                self._on_batch(BatchStats(len(batch), len(images), seconds))
            except Exception:  # a metrics hook must not go unnoticed, nor fail the requests
                logger.exception("the on_batch callback failed")
