"""Hygiene: optional API key, CORS off unless allow-listed, request ids that cannot forge logs."""

import re

import pytest

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
    paths = client.get("/openapi.json").json()["paths"]
    assert "security" not in paths["/predict"]["post"]
    # The repository API is never open: it needs ADMIN_API_KEY, and says so.
    assert "security" in paths["/v2/repository/models/{name}/unload"]["post"]


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


# The routes anyone may call when keys are set: probes, metrics and server metadata. Every other
# documented route must refuse a request without a key; a new route is guarded unless listed.
PUBLIC = {
    ("GET", "/health"),
    ("GET", "/health/live"),
    ("GET", "/metrics"),
    ("GET", "/v2"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
}
REPOSITORY = "/v2/repository/"


def documented_routes(client) -> list[tuple[str, str]]:
    paths = client.get("/openapi.json").json()["paths"]
    return [
        (method.upper(), path.replace("{name}", "cifar10").replace("{version}", "1"))
        for path, operations in paths.items()
        for method in operations
    ]


def test_every_route_outside_the_public_list_needs_its_key(make_client) -> None:
    client = make_client(api_key="inference", admin_api_key="admin")
    routes = documented_routes(client)
    assert {path for _, path in routes} >= {"/predict", "/explain", "/model", "/v2/models/cifar10"}

    for method, path in routes:
        anonymous = client.request(method, path)
        if (method, path) in PUBLIC:
            assert anonymous.status_code not in (401, 403), (method, path)
            continue
        assert anonymous.status_code == 401, (method, path, anonymous.status_code)
        inference = client.request(method, path, headers={"X-API-Key": "inference"})
        admin = client.request(method, path, headers={"X-API-Key": "admin"})
        if path.startswith(REPOSITORY):  # the inference key may not unload the model
            assert inference.status_code == 403, (method, path)
            assert admin.status_code not in (401, 403), (method, path)
        else:  # the admin key is for the repository only
            assert inference.status_code not in (401, 403), (method, path)
            assert admin.status_code == 401, (method, path)


def test_the_repository_api_is_closed_without_an_admin_key(make_client) -> None:
    client = make_client(api_key="inference")

    refused = client.post(
        "/v2/repository/models/cifar10/unload", headers={"X-API-Key": "inference"}
    )

    assert refused.status_code == 403 and "ADMIN_API_KEY" in refused.json()["error"]
    assert client.get("/health").status_code == 200  # still serving


def test_a_refused_key_is_told_why(make_client) -> None:
    client = make_client(api_key="inference", admin_api_key="admin")
    unload = "/v2/repository/models/cifar10/unload"
    cases = [
        ("/predict", None, 401, "X-API-Key"),
        (unload, None, 401, "missing X-API-Key"),
        (unload, "guess", 401, "wrong X-API-Key"),
        (unload, "inference", 403, "inference key"),
    ]

    for path, key, status, reason in cases:
        headers = {} if key is None else {"X-API-Key": key}
        refused = client.post(path, headers=headers)
        assert refused.status_code == status, (path, key)
        assert reason in refused.text, (path, key, refused.text)
    assert client.get("/health").status_code == 200  # nothing was unloaded


def test_one_key_cannot_be_both(make_client) -> None:
    from pydantic import ValidationError

    from app.settings import Settings

    with pytest.raises(ValidationError, match="ADMIN_API_KEY must differ"):
        Settings(api_key="same", admin_api_key="same")


def test_protect_details_puts_metrics_and_health_details_behind_the_key(make_client) -> None:
    client = make_client(api_key="inference", protect_details=True)
    key = {"X-API-Key": "inference"}

    anonymous, keyed = client.get("/health"), client.get("/health", headers=key)

    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok"}  # probes work
    assert keyed.json()["model"] == "cifar10" and "labels" in keyed.json()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=key).status_code == 200


def test_details_stay_open_unless_asked(make_client) -> None:
    client = make_client(api_key="inference")

    assert client.get("/health").json()["model"] == "cifar10"
    assert client.get("/metrics").status_code == 200
