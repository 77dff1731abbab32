"""Readiness, liveness and model metadata."""

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.conftest import LABELS


def test_health_reports_the_loaded_model(make_client) -> None:
    client = make_client(inference_backend="openvino", inference_precision="f32")
    response = client.get("/health")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "model": "cifar10",
        "version": 1,
        "versions": [1],
        "backend": "openvino",
        "precision": "f32",
        "labels": LABELS,
    }


def test_live_answers(client) -> None:
    assert client.get("/health/live").json() == {"status": "alive"}


def test_model_endpoint_returns_metadata(client) -> None:
    body = client.get("/model").json()

    assert body["labels"] == LABELS
    assert body["input"] == {"height": 32, "width": 32, "channels": 3, "dtype": "uint8"}
    assert "metrics" in body and "versions" in body


@pytest.mark.parametrize(
    ("backend", "precision"), [("tensorflow", "f32"), ("openvino", "f32"), ("openvino", "int8")]
)
def test_health_model_and_v2_say_how_the_version_runs(
    make_client, backend: str, precision: str
) -> None:
    client = make_client(inference_backend=backend, inference_precision=precision)

    health = client.get("/health").json()
    runtime = client.get("/model").json()["runtime"]
    v2 = client.get("/v2/models/cifar10").json()["parameters"]

    assert (health["backend"], health["precision"]) == (backend, precision)
    assert (runtime["backend"], runtime["precision"]) == (backend, precision)
    assert v2 == {"backend": backend, "precision": precision}
    assert runtime["precision_reason"] == "as INFERENCE_PRECISION says"


def test_auto_says_why_it_chose(make_client) -> None:
    client = make_client(inference_precision="auto")

    reason = client.get("/model").json()["runtime"]["precision_reason"]

    # The tiny model records no accuracy per precision: auto keeps the float32 it was exported in.
    assert reason.startswith("auto; ") and "no test accuracy recorded" in reason
    assert client.get("/health").json()["precision"] == "f32"


@pytest.mark.anyio
async def test_not_ready_before_the_lifespan_has_loaded_the_model(tiny_model_dir) -> None:
    # ASGITransport does not run the lifespan: the app is up but has no model yet.
    app = create_app(Settings(model_dir=tiny_model_dir))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        health = await client.get("/health")
        live = await client.get("/health/live")
        predict = await client.post("/predict", files={"files": ("a.png", b"x", "image/png")})

    assert health.status_code == 503
    assert health.json()["error"]["code"] == "not_ready"
    assert live.status_code == 200
    assert predict.status_code == 503
