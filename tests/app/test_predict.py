"""POST /predict through the real ASGI app: results, order, top_k, and agreement with the model."""

import json
import math
import threading
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from app.preprocessing import decode_image
from tests.conftest import LABELS, assert_served_like, export_tiny_model, image_bytes


def direct_probabilities(model_dir: Path, images: np.ndarray) -> np.ndarray:
    """The serving signature called directly, bypassing the service."""
    signature = tf.saved_model.load(str(model_dir / "1")).signatures["serving_default"]
    return signature(images=tf.constant(images))["probabilities"].numpy()


def test_one_png_gives_one_full_result(client) -> None:
    response = client.post("/predict", files={"files": ("a.png", image_bytes(), "image/png")})

    assert response.status_code == 200
    body = response.json()
    assert (body["model"], body["version"]) == ("cifar10", 1)
    [prediction] = body["predictions"]
    assert prediction["filename"] == "a.png"
    assert set(prediction["probabilities"]) == set(LABELS)
    assert math.isclose(sum(prediction["probabilities"].values()), 1.0, abs_tol=1e-4)
    best = max(prediction["probabilities"], key=prediction["probabilities"].get)
    assert prediction["label"] == best
    assert prediction["confidence"] == pytest.approx(prediction["probabilities"][best])
    assert len(prediction["top_k"]) == 3


def test_results_follow_request_order_and_match_the_model(client, tiny_model_dir) -> None:
    uploads = [
        ("files", (f"img{i}.{fmt.lower()}", image_bytes(fmt, (40 + i, 30), seed=i), "image/x"))
        for i, fmt in enumerate(["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
    ]

    response = client.post("/predict", files=uploads)

    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert [p["filename"] for p in predictions] == [name for _, (name, _, _) in uploads]
    pixels = np.stack([decode_image(data, max_pixels=10**6) for _, (_, data, _) in uploads])
    expected = direct_probabilities(tiny_model_dir, pixels)
    served = np.array([[p["probabilities"][label] for label in LABELS] for p in predictions])
    assert_served_like(served, expected, client.get("/health").json()["precision"])


@pytest.mark.parametrize("k", [1, 5, 10])
def test_top_k_is_sorted_and_sized(client, k: int) -> None:
    response = client.post(
        "/predict", params={"top_k": k}, files={"files": ("a.png", image_bytes(), "image/png")}
    )

    assert response.status_code == 200
    [prediction] = response.json()["predictions"]
    ranked = prediction["top_k"]
    assert len(ranked) == k
    probabilities = [entry["probability"] for entry in ranked]
    assert probabilities == sorted(probabilities, reverse=True)
    assert ranked[0]["label"] == prediction["label"]
    for entry in ranked:
        assert entry["probability"] == pytest.approx(prediction["probabilities"][entry["label"]])


def test_max_images_per_request_is_accepted(make_client) -> None:
    client = make_client(max_images_per_request=8)
    files = [("files", (f"{i}.png", image_bytes(seed=i), "image/png")) for i in range(8)]

    response = client.post("/predict", files=files)

    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 8


def test_openapi_documents_predict_and_its_errors(client) -> None:
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/predict"]["post"]

    assert {"200", "400", "413", "415", "422", "503", "504"} <= set(operation["responses"])
    assert "one batch" in operation["description"]  # the route's docstring, not just a summary
    assert schema["info"]["version"] == version("cifar10-service")
    assert schema["tags"][0]["name"] == "predict"
    assert next(iter(schema["paths"])) == "/predict"  # the endpoint people came for, first
    assert "examples" in str(schema["components"]["schemas"]["PredictResponse"])
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["files"]
    assert form["properties"]["files"]["items"]["format"] == "binary"  # file pickers need this
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static/swagger-ui/swagger-ui-bundle.js" in docs.text
    bundle = client.get("/static/swagger-ui/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.content) > 100_000  # served locally


def test_every_image_is_opened_and_decoded_off_the_event_loop(
    client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small or large, every upload is opened and decoded on the decode threads (a TIFF's
    tags once stalled the event loop for seconds); spies record the thread and call the real
    functions."""
    from app import serving as route  # the decode step /predict and /explain share

    threads: list[str] = []

    def spied(real):
        def spy(*args, **options):
            threads.append(threading.current_thread().name)
            return real(*args, **options)

        return spy

    monkeypatch.setattr(route, "open_image", spied(route.open_image))
    monkeypatch.setattr(route, "to_model_input", spied(route.to_model_input))
    files = [
        ("files", ("small.png", image_bytes(size=(32, 32)))),
        ("files", ("large.png", image_bytes(size=(300, 300)))),
    ]

    response = client.post("/predict", files=files)

    assert response.status_code == 200
    assert [p["filename"] for p in response.json()["predictions"]] == ["small.png", "large.png"]
    assert len(threads) == 4 and all(name.startswith("decode") for name in threads), threads


def flags(client, query: str = "") -> tuple[float, list[tuple[float, bool]]]:
    """The threshold a /predict of three images used, and per image (confidence, uncertain)."""
    files = [("files", (f"{i}.png", image_bytes(seed=i))) for i in range(3)]
    body = client.post(f"/predict{query}", files=files).json()
    return body["uncertain_below"], [(p["confidence"], p["uncertain"]) for p in body["predictions"]]


def test_an_answer_below_the_threshold_is_flagged_uncertain(client) -> None:
    _, answers = flags(client)
    middle = sorted(confidence for confidence, _ in answers)[1]

    threshold, flagged = flags(client, f"?uncertain_below={middle}")

    assert threshold == middle
    assert [uncertain for _, uncertain in flagged] == [c < middle for c, _ in flagged]
    assert sum(uncertain for _, uncertain in flagged) == 1  # strictly below: the lowest only


def test_the_threshold_comes_from_the_request_the_setting_or_the_version(
    make_client, tmp_path: Path
) -> None:
    plain = make_client()
    assert flags(plain)[0] == 0  # a version without a recorded threshold flags nothing
    assert not any(uncertain for _, uncertain in flags(plain)[1])

    version_dir = export_tiny_model(tmp_path / "cifar10" / "1")
    metadata = json.loads((version_dir / "metadata.json").read_text())
    metadata["uncertainty"] = {"threshold": 0.99}
    (version_dir / "metadata.json").write_text(json.dumps(metadata))
    own = make_client(model_dir=tmp_path / "cifar10")
    assert flags(own)[0] == 0.99
    assert all(uncertain for _, uncertain in flags(own)[1])  # no tiny-model answer reaches 0.99

    assert flags(make_client(model_dir=tmp_path / "cifar10", uncertain_below=0.0))[0] == 0.0
    assert flags(own, "?uncertain_below=0")[1] == [(c, False) for c, _ in flags(own)[1]]


@pytest.mark.parametrize("value", ["-0.1", "1.5", "sure"])
def test_an_out_of_range_threshold_is_a_422(client, value: str) -> None:
    response = client.post(
        f"/predict?uncertain_below={value}", files={"files": ("a.png", image_bytes())}
    )

    assert response.status_code == 422
    assert "uncertain_below" in response.text
