"""Hygiene: optional API key, CORS off unless allow-listed, request ids that cannot forge logs."""

import re

from tests.conftest import image_bytes

PNG = {"files": ("a.png", image_bytes(), "image/png")}
PREFLIGHT = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}


def test_api_key_protects_predict_and_model_but_not_health(make_client) -> None:
    client = make_client(api_key="s3cret")

    assert client.post("/predict", files=PNG).status_code == 401
    wrong = client.post("/predict", files=PNG, headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    assert client.post("/predict", files=PNG, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/model").status_code == 401
    assert client.get("/health").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "APIKeyHeader" in schema["components"]["securitySchemes"]


def test_no_api_key_means_open_and_undocumented(client) -> None:
    assert client.post("/predict", files=PNG).status_code == 200
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


def test_cors_is_off_by_default(client) -> None:
    response = client.options("/predict", headers=PREFLIGHT)

    assert "access-control-allow-origin" not in response.headers


def test_cors_allow_list_is_honoured(make_client) -> None:
    client = make_client(cors_allow_origins=["https://app.example"])

    allowed = client.options("/predict", headers=PREFLIGHT)
    other = client.options("/predict", headers=PREFLIGHT | {"Origin": "https://evil.example"})

    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers


def test_request_id_is_echoed_or_generated(client) -> None:
    given = client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    forged = client.get("/health/live", headers={"X-Request-ID": "x\nlevel=error"})
    missing = client.get("/health/live")

    too_long = client.get("/health/live", headers={"X-Request-ID": "a" * 129})

    assert given.headers["x-request-id"] == "abc-123"
    generated = [r.headers["x-request-id"] for r in (forged, too_long, missing)]
    # A refused id is replaced by a fresh one of the generated kind, never echoed or reused.
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in generated), generated
    assert len(set(generated)) == 3


def test_metrics_count_requests_and_images(client) -> None:
    client.post(
        "/predict", files=[("files", ("a.png", image_bytes())), ("files", ("b.png", image_bytes()))]
    )
    client.post("/predict", files={"files": ("bad.png", b"")})
    text = client.get("/metrics").text

    assert 'http_requests_total{method="POST",route="/predict",status="200"} 1.0' in text
    assert 'http_requests_total{method="POST",route="/predict",status="400"} 1.0' in text
    assert "images_classified_total 2.0" in text
    assert "inference_batch_size_images_count 1.0" in text
    health = client.get("/health").json()
    assert (
        f'model_info{{backend="{health["backend"]}",name="cifar10",'
        f'precision="{health["precision"]}",version="1"}} 1.0'
    ) in text
    assert "batch_queue_images 0.0" in text
