"""Concurrent requests through the real app: own results, overload, timeout, a free event loop."""

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import numpy as np
import pytest
import tensorflow as tf
from fastapi import FastAPI

from app.batcher import Batcher
from app.main import create_app
from app.preprocessing import decode_image
from app.settings import Settings
from tests.conftest import LABELS, image_bytes

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def full_batch() -> list:
    """64 different PNGs: one request that fills a 64-image batch."""
    return [("files", (f"{i}.png", image_bytes(seed=i))) for i in range(64)]


def upload(data: bytes, name: str = "x.png") -> dict:
    return {"files": (name, data, "image/png")}


class GatedModel:
    """Wraps the real classifier, holding each batch until released."""

    def __init__(self, predict) -> None:
        self.predict = predict
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.started.set()
        self.release.wait(timeout=10)
        return self.predict(images)


async def gate_the_model(app: FastAPI, **batcher_options) -> GatedModel:
    """Swap the app's batcher for one whose model call waits for the test's signal."""
    await app.state.batcher.stop()
    gated = GatedModel(app.state.classifier.predict)
    options = {"max_batch_size": 64, "max_batch_delay_ms": 1, "max_queue_images": 64}
    app.state.batcher = Batcher(gated, **(options | batcher_options))
    app.state.batcher.start()
    return gated


async def test_concurrent_requests_each_get_their_own_result(tiny_model_dir) -> None:
    app = create_app(Settings(model_dir=tiny_model_dir, max_batch_delay_ms=20))
    payloads = [
        [image_bytes(size=(32 + i, 32), seed=10 * i + j) for j in range(1 + i % 3)]
        for i in range(12)
    ]
    async with running(app) as client:
        responses = await asyncio.gather(
            *(
                client.post("/predict", files=[("files", (f"{i}.png", d)) for d in payload])
                for i, payload in enumerate(payloads)
            )
        )

    signature = tf.saved_model.load(str(tiny_model_dir / "1")).signatures["serving_default"]
    for payload, response in zip(payloads, responses, strict=True):
        assert response.status_code == 200
        pixels = np.stack([decode_image(d, max_pixels=10**6) for d in payload])
        expected = signature(images=tf.constant(pixels))["probabilities"].numpy()
        served = [[p["probabilities"][k] for k in LABELS] for p in response.json()["predictions"]]
        np.testing.assert_allclose(served, expected, atol=1e-5)


async def test_full_queue_answers_503_with_retry_after(tiny_model_dir) -> None:
    app = create_app(Settings(model_dir=tiny_model_dir))
    async with running(app) as client:
        gated = await gate_the_model(app)
        batch = full_batch()
        first = asyncio.ensure_future(client.post("/predict", files=batch))
        await asyncio.to_thread(gated.started.wait, 5)  # the model is busy with the first
        queued = asyncio.ensure_future(client.post("/predict", files=batch))
        while app.state.batcher.queued_images < 64:
            await asyncio.sleep(0.01)

        refused = await client.post("/predict", files=upload(image_bytes()))
        gated.release.set()
        accepted = await asyncio.gather(first, queued)

    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert [r.status_code for r in accepted] == [200, 200]


async def test_health_answers_while_a_batch_computes(tiny_model_dir) -> None:
    app = create_app(Settings(model_dir=tiny_model_dir))
    async with running(app) as client:
        gated = await gate_the_model(app)
        batch = full_batch()
        pending = asyncio.ensure_future(client.post("/predict", files=batch))
        await asyncio.to_thread(gated.started.wait, 5)

        health = await client.get("/health")
        still_computing = not pending.done()
        gated.release.set()
        result = await pending

    assert health.status_code == 200 and still_computing
    assert result.status_code == 200 and len(result.json()["predictions"]) == 64


async def test_request_over_the_timeout_is_504(tiny_model_dir) -> None:
    app = create_app(Settings(model_dir=tiny_model_dir, request_timeout_s=1e-6))
    async with running(app) as client:
        response = await client.post("/predict", files=upload(image_bytes()))

    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"


async def test_shutdown_answers_requests_still_waiting(tiny_model_dir) -> None:
    app = create_app(Settings(model_dir=tiny_model_dir))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        async with app.router.lifespan_context(app):
            gated = await gate_the_model(app)
            requests = [
                asyncio.ensure_future(client.post("/predict", files=upload(image_bytes(seed=i))))
                for i in range(3)
            ]
            await asyncio.to_thread(gated.started.wait, 5)
            threading.Timer(0.2, gated.release.set).start()
        # the lifespan has exited: the batcher drained before stopping
        responses = await asyncio.gather(*requests)

    assert [r.status_code for r in responses] == [200, 200, 200]
