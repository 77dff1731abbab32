"""Concurrent requests through the real app: own results, overload, timeout, a free event loop."""

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import numpy as np
import pytest
import tensorflow as tf
from fastapi import FastAPI

from app import serving
from app.batcher import Batcher
from app.main import create_app
from app.model import Classifier
from app.preprocessing import decode_image
from app.settings import Settings
from tests.conftest import (
    LABELS,
    assert_served_like,
    binary_infer_body,
    bytes_elements,
    image_bytes,
    until,
)

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
    """Wraps the real classifier's predict; once armed (after the start-up warm-up), holds
    each batch until released and records the batch sizes it saw."""

    def __init__(self, predict) -> None:
        self.predict = predict
        self.armed = False
        self.release = threading.Event()
        self.started = threading.Event()
        self.batches: list[int] = []

    def __call__(self, classifier: Classifier, images: np.ndarray, views_below=None) -> np.ndarray:
        if not self.armed:
            return self.predict(classifier, images, views_below)
        self.batches.append(len(images))
        self.started.set()
        assert self.release.wait(timeout=60), "the test never released the model"
        return self.predict(classifier, images, views_below)


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> GatedModel:
    """Gate every Classifier's predict, so the app's own batcher (built by its lifespan from
    the settings under test) computes only when the test says."""
    gate = GatedModel(Classifier.predict)

    def predict(classifier: Classifier, images: np.ndarray, views_below=None) -> np.ndarray:
        return gate(classifier, images, views_below)  # a method again

    monkeypatch.setattr(Classifier, "predict", predict)
    return gate


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
        precision = (await client.get("/health")).json()["precision"]

    signature = tf.saved_model.load(str(tiny_model_dir / "1")).signatures["serving_default"]
    for payload, response in zip(payloads, responses, strict=True):
        assert response.status_code == 200
        pixels = np.stack([decode_image(d, max_pixels=10**6) for d in payload])
        expected = signature(images=tf.constant(pixels))["probabilities"].numpy()
        served = [[p["probabilities"][k] for k in LABELS] for p in response.json()["predictions"]]
        assert_served_like(served, expected, precision)


async def test_full_queue_answers_503_with_retry_after(tiny_model_dir, gated) -> None:
    """MAX_QUEUE_IMAGES and INFERENCE_WORKERS as the app wires them: with one worker busy and
    64 images queued, the queue is full; with a second worker the second request would run."""
    settings = Settings(
        model_dir=tiny_model_dir, max_batch_size=64, max_queue_images=64, inference_workers=1
    )
    app = create_app(settings)
    async with running(app) as client:
        gated.armed = True
        batch = full_batch()
        first = asyncio.ensure_future(client.post("/predict", files=batch))
        await asyncio.to_thread(gated.started.wait, 30)  # the one worker is busy
        queued = asyncio.ensure_future(client.post("/predict", files=batch))
        await until(
            lambda: app.state.repository.get().batcher.queued_images == 64,
            "the second never queued",
        )

        refused = await client.post("/predict", files=upload(image_bytes()))
        gated.release.set()
        accepted = await asyncio.gather(first, queued)

    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert [r.status_code for r in accepted] == [200, 200]
    assert gated.batches == [64, 64]  # the two accepted, each whole


async def test_bodies_in_flight_share_one_budget(tiny_model_dir, gated) -> None:
    """MAX_UPLOAD_BYTES_IN_FLIGHT: with one body held (its request is in the model), a second
    that would pass the budget gets 503 before its body is read; once the first is answered,
    its bytes are free again."""
    big = image_bytes(size=(300, 300))  # ~270 KB of random pixels
    settings = Settings(
        model_dir=tiny_model_dir,
        max_upload_bytes=len(big) + 4096,
        max_upload_bytes_in_flight=len(big) + 8192,
    )
    app = create_app(settings)
    async with running(app) as client:
        gated.armed = True
        first = asyncio.ensure_future(client.post("/predict", files=upload(big)))
        await asyncio.to_thread(gated.started.wait, 30)  # its body is held
        refused = await client.post("/predict", files=upload(big))
        probe = await client.get("/health")  # no body: nothing to hold
        gated.release.set()
        answered = await first
        gated.armed = False
        again = await client.post("/predict", files=upload(big))

    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert "MAX_UPLOAD_BYTES_IN_FLIGHT" in refused.json()["error"]["message"]
    assert probe.status_code == 200
    assert answered.status_code == 200 and again.status_code == 200


async def test_health_answers_while_a_batch_computes(tiny_model_dir, gated) -> None:
    app = create_app(Settings(model_dir=tiny_model_dir))
    async with running(app) as client:
        gated.armed = True
        pending = asyncio.ensure_future(client.post("/predict", files=full_batch()))
        await asyncio.to_thread(gated.started.wait, 30)

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


async def test_shutdown_answers_requests_still_waiting(tiny_model_dir, gated) -> None:
    app = create_app(Settings(model_dir=tiny_model_dir, inference_workers=1))
    transport = httpx.ASGITransport(app=app)

    async def release_once_stopping(batcher: Batcher) -> None:
        await until(lambda: batcher.closed, "the lifespan never stopped the batcher")
        gated.release.set()

    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        async with app.router.lifespan_context(app):
            gated.armed = True
            requests = [
                asyncio.ensure_future(client.post("/predict", files=upload(image_bytes(seed=i))))
                for i in range(3)
            ]
            await asyncio.to_thread(gated.started.wait, 30)
            batcher = app.state.repository.get().batcher
            releaser = asyncio.ensure_future(release_once_stopping(batcher))
        # the lifespan has exited: the batcher drained before stopping
        responses = await asyncio.gather(*requests)
        await releaser

    assert [r.status_code for r in responses] == [200, 200, 200]


async def test_a_request_after_the_batcher_stopped_gets_503_shutting_down(tiny_model_dir) -> None:
    app = create_app(Settings(model_dir=tiny_model_dir))
    async with running(app) as client:
        await app.state.repository.get().batcher.stop()  # what the lifespan does on shutdown
        response = await client.post("/predict", files=upload(image_bytes()))

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "shutting_down"
    assert response.headers["retry-after"] == "1"


async def test_a_client_gone_before_its_batch_is_dropped_and_logged_499(
    tiny_model_dir, gated, capsys: pytest.CaptureFixture
) -> None:
    app = create_app(Settings(model_dir=tiny_model_dir, inference_workers=1))
    async with running(app) as client:
        gated.armed = True
        busy = asyncio.ensure_future(client.post("/predict", files=full_batch()))
        await asyncio.to_thread(gated.started.wait, 30)  # the worker is busy with 64 images
        request = client.build_request("POST", "/predict", files=upload(image_bytes(seed=5)))
        sent = await send_and_leave(app, request)
        gated.release.set()
        assert (await busy).status_code == 200

    assert sent[0]["status"] == 499
    assert gated.batches == [64]  # the abandoned image never ran
    access = [
        json.loads(line) for line in capsys.readouterr().err.splitlines() if "app.access" in line
    ]
    assert any(entry["status"] == 499 and entry["path"] == "/predict" for entry in access)


async def send_and_leave(
    app: FastAPI, request: httpx.Request, leave: Callable[[], Awaitable[None]] | None = None
) -> list[dict]:
    """Call the app as an ASGI server does for a client that sends its whole request and then
    disconnects (once `leave` returns) while waiting; the messages the app sent back."""
    body = {"type": "http.request", "body": request.read(), "more_body": False}
    received = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal received
        received += 1
        if received == 1:
            return body
        if received == 2:
            if leave is not None:
                await leave()
            return {"type": "http.disconnect"}
        return await asyncio.Event().wait()

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.url.path,
        "raw_path": request.url.raw_path,
        "query_string": request.url.query,
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.items()],
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
    }
    await app(scope, receive, send)
    return sent


class GatedDecodes:
    """Wraps the real decode in app.serving; holds each until released, counting those that
    started."""

    def __init__(self, decode) -> None:
        self.decode = decode
        self.release = threading.Event()
        self.started = 0
        self._lock = threading.Lock()

    def __call__(self, *args, **kwargs) -> np.ndarray:
        with self._lock:
            self.started += 1
        assert self.release.wait(timeout=60), "the test never released the decodes"
        return self.decode(*args, **kwargs)


@pytest.fixture
def gated_decodes(monkeypatch: pytest.MonkeyPatch) -> GatedDecodes:
    gate = GatedDecodes(serving.to_model_input)
    monkeypatch.setattr(serving, "to_model_input", gate)
    return gate


def three_images(client: httpx.AsyncClient, route: str) -> httpx.Request:
    """One request for three PNGs on /predict, /explain or /v2 (a BYTES tensor)."""
    images = [image_bytes(seed=i) for i in range(3)]
    if route == "/v2":
        body, headers = binary_infer_body([3], "BYTES", bytes_elements(images))
        return client.build_request(
            "POST", "/v2/models/cifar10/infer", content=body, headers=headers
        )
    return client.build_request(
        "POST", route, files=[("files", (f"{i}.png", data)) for i, data in enumerate(images)]
    )


async def decodes_run_after(app: FastAPI, gate: GatedDecodes) -> int:
    """Open the gate and decode one more image: the decode threads take their queue in order,
    so every decode that was still queued has started by the time this one is done."""
    gate.release.set()
    await app.state.decode_pool.decode(image_bytes(), 10**6, 32)
    return gate.started - 1


@pytest.mark.parametrize("route", ["/predict", "/explain", "/v2"])
async def test_the_timeout_holds_while_images_decode_and_drops_the_rest(
    tiny_model_dir, gated_decodes, route: str
) -> None:
    """REQUEST_TIMEOUT_S covers decoding: the 504 comes while a decode is held, and the images
    still waiting for a decode thread are never decoded."""
    settings = Settings(model_dir=tiny_model_dir, decode_threads=1, request_timeout_s=0.5)
    app = create_app(settings)
    async with running(app) as client:
        response = await client.send(three_images(client, route))
        assert gated_decodes.started == 1  # one thread; the other two images wait for it
        assert await decodes_run_after(app, gated_decodes) == 1

    assert response.status_code == 504, response.text
    assert "REQUEST_TIMEOUT_S" in response.text


@pytest.mark.parametrize("route", ["/predict", "/explain", "/v2"])
async def test_a_client_gone_while_images_decode_is_499_and_drops_the_rest(
    tiny_model_dir, gated_decodes, route: str
) -> None:
    app = create_app(Settings(model_dir=tiny_model_dir, decode_threads=1))
    async with running(app) as client:
        decoding = until(lambda: gated_decodes.started == 1, "no decode started")
        sent = await send_and_leave(app, three_images(client, route), leave=lambda: decoding)
        assert gated_decodes.started == 1  # one thread; the other two images wait for it
        assert await decodes_run_after(app, gated_decodes) == 1

    assert sent[0]["status"] == 499
