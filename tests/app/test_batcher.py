"""The batcher on its own, with a plain NumPy function as the model."""

import asyncio
import threading

import numpy as np
import pytest

from app.batcher import Batcher, BatcherClosed, BatchStats, QueueFull
from tests.conftest import until

pytestmark = pytest.mark.anyio


def row_sums(images: np.ndarray, views_below: np.ndarray | None = None) -> np.ndarray:
    """A stand-in model whose output identifies its input: one row per image."""
    return images.reshape(len(images), -1).sum(axis=1, keepdims=True).astype(np.float64)


def images_of(value: int, count: int = 1) -> np.ndarray:
    return np.full((count, 2, 2, 3), value, dtype=np.uint8)


class Gate:
    """An inference function that blocks until released, recording the batches it saw."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.batches: list[int] = []

    def __call__(self, images: np.ndarray, views_below: np.ndarray) -> np.ndarray:
        self.batches.append(len(images))
        self.started.set()
        self.release.wait(timeout=10)
        return row_sums(images)


def make(infer=row_sums, **kwargs) -> Batcher:
    options = {"max_batch_size": 8, "max_batch_delay_ms": 20, "max_queue_images": 64}
    options.update(kwargs)
    return Batcher(infer, **options)


async def test_concurrent_requests_share_one_call_and_get_their_own_rows() -> None:
    stats: list[BatchStats] = []
    batcher = make(on_batch=stats.append)
    batcher.start()

    futures = [batcher.submit(images_of(value, count)) for value, count in [(1, 1), (2, 3), (3, 2)]]
    results = await asyncio.gather(*futures)
    await batcher.stop()

    assert [r.ravel().tolist() for r in results] == [[12.0], [24.0] * 3, [36.0] * 2]
    assert [(s.requests, s.images) for s in stats] == [(3, 6)]


async def test_requests_asking_for_different_views_share_one_call_row_by_row() -> None:
    """Each image carries its request's views threshold into the shared call; NaN where the
    request asked for nothing (the model's own)."""
    seen: list[np.ndarray] = []

    def infer(images: np.ndarray, views_below: np.ndarray) -> np.ndarray:
        seen.append(views_below.copy())
        return views_below[:, None].astype(np.float64)  # each row answers with its threshold

    batcher = make(infer)
    asked = [(None, 2), (0.0, 1), (np.inf, 3), (0.5, 1)]
    futures = [batcher.submit(images_of(1, count), views) for views, count in asked]
    batcher.start()  # all four are queued: one batch
    results = await asyncio.gather(*futures)
    await batcher.stop()

    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], [np.nan] * 2 + [0.0] + [np.inf] * 3 + [0.5])
    for (views, count), rows in zip(asked, results, strict=True):
        expected = np.nan if views is None else views
        np.testing.assert_array_equal(rows.ravel(), [expected] * count)


async def test_batches_never_exceed_the_size_and_never_split_a_request() -> None:
    gate = Gate()
    batcher = make(gate, max_batch_size=8)
    batcher.start()
    first = batcher.submit(images_of(0))
    await asyncio.to_thread(gate.started.wait, 5)  # the worker is busy; the rest queue up
    futures = [batcher.submit(images_of(value, 3)) for value in range(1, 6)]
    gate.release.set()

    await asyncio.gather(first, *futures)
    await batcher.stop()

    assert gate.batches == [1, 6, 6, 3]


async def test_full_queue_refuses_new_work() -> None:
    gate = Gate()
    batcher = make(gate, max_batch_size=4, max_queue_images=4)
    batcher.start()
    running = batcher.submit(images_of(1, 4))
    await asyncio.to_thread(gate.started.wait, 5)
    waiting = batcher.submit(images_of(2, 4))

    with pytest.raises(QueueFull):
        batcher.submit(images_of(3))
    gate.release.set()
    await asyncio.gather(running, waiting)
    await batcher.stop()


async def test_cancelled_request_is_not_computed() -> None:
    gate = Gate()
    batcher = make(gate)
    batcher.start()
    running = batcher.submit(images_of(1))
    await asyncio.to_thread(gate.started.wait, 5)
    abandoned = batcher.submit(images_of(2, 5))
    kept = batcher.submit(images_of(3, 2))
    abandoned.cancel()
    gate.release.set()

    await asyncio.gather(running, kept)
    await batcher.stop()

    assert gate.batches == [1, 2]


@pytest.mark.parametrize("workers", [1, 2])
async def test_stop_answers_every_queued_request_then_refuses(workers: int) -> None:
    gate = Gate()
    batcher = make(gate, max_batch_size=2, workers=workers)
    batcher.start()
    futures = [batcher.submit(images_of(value)) for value in range(5)]
    await asyncio.to_thread(gate.started.wait, 5)

    stopping = asyncio.ensure_future(batcher.stop())
    await until(lambda: batcher.closed, "stop() never began")
    gate.release.set()  # only now: the queued requests are finished by a stopping batcher
    await stopping

    assert all(f.done() and not f.cancelled() for f in futures)
    assert [f.result()[0, 0] for f in futures] == [12.0 * v for v in range(5)]
    with pytest.raises(BatcherClosed):
        batcher.submit(images_of(1))


async def test_a_failing_batch_fails_each_of_its_requests() -> None:
    def broken(images: np.ndarray, views_below: np.ndarray) -> np.ndarray:
        return row_sums(images)[:-1]  # one row short

    batcher = make(broken)
    batcher.start()
    futures = [batcher.submit(images_of(v)) for v in range(3)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    await batcher.stop()

    assert all(isinstance(r, RuntimeError) and "rows" in str(r) for r in results)


async def test_two_workers_compute_two_batches_at_once() -> None:
    both_inside = threading.Barrier(2, timeout=10)  # passes only if two calls overlap

    def infer(images: np.ndarray, views_below: np.ndarray) -> np.ndarray:
        both_inside.wait()
        return row_sums(images)

    batcher = make(infer, max_batch_size=1, workers=2)
    batcher.start()
    results = await asyncio.gather(batcher.submit(images_of(1)), batcher.submit(images_of(2)))
    await batcher.stop()

    assert [r[0, 0] for r in results] == [12.0, 24.0]


@pytest.mark.parametrize("workers", [1, 2, 3])
async def test_no_more_batches_run_at_once_than_workers(workers: int) -> None:
    lock = threading.Lock()
    inside, most = 0, 0
    # Each call waits until `workers` calls are inside together, so the overlap is produced by
    # synchronisation, not by a sleep; a batcher running more at once would raise `most`.
    together = threading.Barrier(workers, timeout=30)

    def infer(images: np.ndarray, views_below: np.ndarray) -> np.ndarray:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        together.wait()
        with lock:
            inside -= 1
        return row_sums(images)

    batcher = make(infer, max_batch_size=1, workers=workers)
    batcher.start()
    count = 3 * workers
    results = await asyncio.gather(*(batcher.submit(images_of(v)) for v in range(count)))
    await batcher.stop()

    assert [r[0, 0] for r in results] == [12.0 * v for v in range(count)]
    assert most == workers


def test_constructor_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(row_sums, max_batch_size=0, max_batch_delay_ms=1, max_queue_images=8)
    with pytest.raises(ValueError, match="max_queue_images"):
        Batcher(row_sums, max_batch_size=8, max_batch_delay_ms=1, max_queue_images=4)
    with pytest.raises(ValueError, match="workers"):
        Batcher(row_sums, max_batch_size=8, max_batch_delay_ms=1, max_queue_images=8, workers=0)


async def test_a_lone_request_does_not_wait_for_the_batch_delay() -> None:
    batcher = make(max_batch_delay_ms=60_000)  # a minute: the test would time out if it waited
    batcher.start()

    result = await asyncio.wait_for(batcher.submit(images_of(1)), timeout=10)
    await batcher.stop()

    assert result[0, 0] == 12.0


async def test_the_batch_waits_for_requests_still_being_decoded() -> None:
    stats: list[BatchStats] = []
    batcher = make(max_batch_delay_ms=60_000, on_batch=stats.append)
    batcher.start()

    with batcher.incoming():  # another request is being decoded
        first = batcher.submit(images_of(1))
        await until(lambda: batcher.queued_images == 0, "the batcher never took `first`")
        second = batcher.submit(images_of(2))  # arrives while the batch is being formed
    await asyncio.gather(first, second)
    await batcher.stop()

    assert [(s.requests, s.images) for s in stats] == [(2, 2)]


async def test_the_batch_runs_at_its_deadline_though_a_request_is_still_decoding() -> None:
    stats: list[BatchStats] = []
    batcher = make(max_batch_delay_ms=50, on_batch=stats.append)
    batcher.start()

    with batcher.incoming():  # a request that never arrives
        result = await asyncio.wait_for(batcher.submit(images_of(1)), timeout=30)
    await batcher.stop()

    assert result[0, 0] == 12.0 and [(s.requests, s.images) for s in stats] == [(1, 1)]


async def test_a_failing_on_batch_hook_is_logged_and_fails_no_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_hook(stats: BatchStats) -> None:
        raise ValueError("metrics backend down")

    batcher = make(on_batch=broken_hook)
    batcher.start()
    results = await asyncio.gather(*(batcher.submit(images_of(v)) for v in range(3)))
    await batcher.stop()

    assert [r[0, 0] for r in results] == [0.0, 12.0, 24.0]
    assert any("on_batch" in r.getMessage() and r.exc_info for r in caplog.records)
