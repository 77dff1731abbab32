"""POST /explain through the real app: the map's shape and range, agreement with /predict, what
the map claims checked by occluding the image independently, the heat map, and the limits."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import FIXTURES, LABELS, REPO, image_bytes, png_of

SHIPPED = REPO / "models" / "cifar10"
PNGS = sorted((FIXTURES / "cifar10").glob("*.png"))


def from_data_url(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :])))
    assert image.format == "PNG"
    return image


def uploads(paths: list) -> list:
    return [("files", (path.name, path.read_bytes(), "image/png")) for path in paths]


def occluded(pixels: np.ndarray, row: int, column: int, body: dict) -> np.ndarray:
    """The square of the map's position (row, column) greyed out, built here, not by the app."""
    top, left, patch = row * body["stride"], column * body["stride"], body["patch"]
    copy = pixels.copy()
    copy[top : top + patch, left : left + patch] = body["fill"]
    return copy


def test_one_map_per_image_in_range_and_the_same_answer_as_predict(make_client) -> None:
    # f32 whatever --precision says: int8 flattens the untrained tiny model's small answers to
    # grey squares into one value, and a map of zeros could not show that occlusion works.
    client = make_client(inference_precision="f32")
    files = [
        ("files", ("a.png", image_bytes(seed=1), "image/png")),
        ("files", ("b.jpg", image_bytes("JPEG", (64, 48), seed=2), "image/jpeg")),
    ]

    explained = client.post("/explain", files=files)
    predicted = client.post("/predict", files=files)

    assert explained.status_code == 200, explained.text
    body = explained.json()
    assert (body["model"], body["version"]) == ("cifar10", 1)
    assert (body["patch"], body["stride"], body["fill"]) == (8, 4, 128)
    assert [e["filename"] for e in body["explanations"]] == ["a.png", "b.jpg"]
    for explanation, prediction in zip(
        body["explanations"], predicted.json()["predictions"], strict=True
    ):
        grid = np.array(explanation["sensitivity"])
        assert grid.shape == (7, 7)  # (32 - 8) / 4 + 1 positions per side
        assert np.all((grid >= -1) & (grid <= 1)) and np.any(grid != 0)
        assert explanation["label"] == prediction["label"]
        assert [t["label"] for t in explanation["top_k"]] == [
            t["label"] for t in prediction["top_k"]
        ]
        got = [explanation["probabilities"][label] for label in LABELS]
        want = [prediction["probabilities"][label] for label in LABELS]
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert explanation["heatmap_png"] is None  # only on request


def test_input_png_is_exactly_what_the_model_classified(client) -> None:
    """Classifying the returned 32x32 PNG again gives the same probabilities, and a 32x32
    upload comes back pixel for pixel."""
    upload = PNGS[0].read_bytes()
    body = client.post("/explain", files={"files": ("cat.png", upload, "image/png")}).json()
    [explanation] = body["explanations"]

    seen = from_data_url(explanation["input_png"])
    assert (seen.size, seen.mode) == ((32, 32), "RGB")
    np.testing.assert_array_equal(
        np.asarray(seen), np.asarray(Image.open(io.BytesIO(upload)).convert("RGB"))
    )
    again = client.post("/predict", files={"files": ("seen.png", png_of(np.asarray(seen)))})
    [prediction] = again.json()["predictions"]
    np.testing.assert_allclose(
        [prediction["probabilities"][label] for label in LABELS],
        [explanation["probabilities"][label] for label in LABELS],
        atol=1e-5,
    )


def test_each_value_is_the_drop_with_that_square_greyed(client) -> None:
    """The map's positions are the image's rows and columns (not transposed or flipped): the
    square greyed out here, sent to /predict, lowers the label by the map's value."""
    pixels = np.asarray(Image.open(PNGS[3]).convert("RGB"))
    body = client.post("/explain", files={"files": ("x.png", png_of(pixels))}).json()
    [explanation] = body["explanations"]
    grid = np.array(explanation["sensitivity"])
    positions = [(0, 6), (6, 0), (1, 4), np.unravel_index(grid.argmax(), grid.shape)]

    files = [
        ("files", (f"{r}-{c}.png", png_of(occluded(pixels, r, c, body)))) for r, c in positions
    ]
    predictions = client.post("/predict", files=files).json()["predictions"]

    label = explanation["label"]
    measured = [explanation["confidence"] - p["probabilities"][label] for p in predictions]
    np.testing.assert_allclose(measured, [grid[r, c] for r, c in positions], atol=1e-5)


def test_a_finer_grid_gives_a_finer_map(client) -> None:
    response = client.post(
        "/explain",
        params={"patch": 4, "stride": 2},
        files={"files": ("a.png", image_bytes(), "image/png")},
    )

    assert response.status_code == 200, response.text
    assert np.array(response.json()["explanations"][0]["sensitivity"]).shape == (15, 15)


def test_hiding_the_most_important_region_costs_more_than_the_least(shipped_client) -> None:
    """On real CIFAR-10 test images and the trained model, the region the map marks most
    important, greyed out independently here, lowers the predicted label's probability more
    than the one it marks least important."""
    chosen = PNGS[1:5]  # ship, airplane, frog, automobile: all classified right
    body = shipped_client.post("/explain", files=uploads(chosen)).json()

    for path, explanation in zip(chosen, body["explanations"], strict=True):
        assert explanation["label"] == path.stem.split("_", 1)[1]
        pixels = np.asarray(Image.open(path).convert("RGB"))
        grid = np.array(explanation["sensitivity"])
        most = np.unravel_index(grid.argmax(), grid.shape)
        least = np.unravel_index(grid.argmin(), grid.shape)
        files = [
            ("files", ("most.png", png_of(occluded(pixels, *most, body)))),
            ("files", ("least.png", png_of(occluded(pixels, *least, body)))),
        ]
        without_most, without_least = (
            p["probabilities"][explanation["label"]]
            for p in shipped_client.post("/predict", files=files).json()["predictions"]
        )
        assert without_most < without_least - 0.1, (path.name, without_most, without_least)


def test_the_heat_map_is_a_png_over_the_upscaled_input_strongest_where_the_map_is(
    shipped_client,
) -> None:
    path = PNGS[1]  # the ship: one clear region
    response = shipped_client.post("/explain", params={"heatmap": True}, files=uploads([path]))
    body = response.json()
    [explanation] = body["explanations"]

    heat = from_data_url(explanation["heatmap_png"])
    assert (heat.size, heat.mode) == ((256, 256), "RGB")
    base = np.asarray(Image.open(path).convert("RGB").resize((256, 256), Image.Resampling.NEAREST))
    change = np.abs(np.asarray(heat, dtype=np.int16) - base).sum(axis=2)
    grid = np.abs(np.array(explanation["sensitivity"]))

    def block(row: int, column: int) -> float:
        """Mean change over the square of that position, scaled 8x like the picture."""
        side, top, left = 8 * body["patch"], 8 * body["stride"] * row, 8 * body["stride"] * column
        return float(change[top : top + side, left : left + side].mean())

    strongest = block(*np.unravel_index(grid.argmax(), grid.shape))
    weakest = block(*np.unravel_index(grid.argmin(), grid.shape))
    assert strongest > 2 * weakest + 10, (strongest, weakest)


def test_more_images_than_one_batch_holds_is_413_naming_the_first_left_out(client) -> None:
    """Default: 50 model inputs per image and MAX_BATCH_SIZE 256, so 5 images fit and 6 do not."""
    files = [("files", (f"img{i}.png", image_bytes(seed=i), "image/png")) for i in range(6)]

    assert client.post("/explain", files=files[:5]).status_code == 200
    response = client.post("/explain", files=files)

    assert response.status_code == 413
    error = response.json()["error"]
    assert (error["code"], error["file"]) == ("too_many_parts", "img5.png")
    assert error["message"].startswith("img5.png: ") and "MAX_BATCH_SIZE 256" in error["message"]


def test_the_cap_follows_max_batch_size(make_client) -> None:
    client = make_client(max_batch_size=60, max_images_per_request=60, max_queue_images=60)
    files = [("files", (f"img{i}.png", image_bytes(seed=i), "image/png")) for i in range(2)]

    response = client.post("/explain", files=files)
    too_fine = client.post("/explain", params={"stride": 2}, files=files[:1])

    assert response.status_code == 413 and response.json()["error"]["file"] == "img1.png"
    assert client.post("/explain", files=files[:1]).status_code == 200
    assert too_fine.status_code == 422
    assert too_fine.json()["error"]["code"] == "invalid_request"
    assert "170 model inputs" in too_fine.json()["error"]["message"]


@pytest.mark.parametrize(
    ("patch", "stride"), [(8, 5), (4, 8), (0, 4), (8, 0), (33, 1), (40, 4), (10**12, 1)]
)
def test_squares_that_do_not_tile_the_input_are_422(client, patch: int, stride: int) -> None:
    response = client.post(
        "/explain",
        params={"patch": patch, "stride": stride},
        files={"files": ("a.png", image_bytes(), "image/png")},
    )

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"


def test_a_text_file_is_415_naming_it(client) -> None:
    files = [
        ("files", ("cat.png", PNGS[0].read_bytes(), "image/png")),
        ("files", ("notes.txt", b"a shopping list, not a picture\n", "text/plain")),
    ]

    response = client.post("/explain", files=files)

    assert response.status_code == 415
    error = response.json()["error"]
    assert (error["code"], error["file"]) == ("unsupported_format", "notes.txt")
    assert error["message"].startswith("notes.txt: not an image in a supported format")


def test_documented_in_openapi_with_its_cost_and_errors(client) -> None:
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/explain"]["post"]

    assert "50 model inputs" in operation["description"]
    assert "MAX_BATCH_SIZE" in operation["description"]
    assert "MAX_QUEUE_IMAGES" in operation["description"]
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/ExplainResponse")
    fields = schema["components"]["schemas"]["Explanation"]["properties"]
    assert {"sensitivity", "input_png", "heatmap_png", "label", "top_k"} <= set(fields)
    documented = {
        status: set(entry["content"]["application/json"]["examples"])
        for status, entry in operation["responses"].items()
        if status[0] in "45"
    }
    assert {"too_many_parts", "image_too_large"} <= documented["413"]
    assert "unsupported_format" in documented["415"]
    assert "invalid_request" in documented["422"]
    assert "overloaded" in documented["503"]
    parameters = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert {"patch", "stride", "heatmap", "top_k"} <= set(parameters)
    assert parameters["top_k"]["maximum"] == 10  # the loaded model's labels
    assert "multipart/form-data" in json.dumps(operation["requestBody"])


@pytest.mark.anyio
async def test_explain_beyond_its_slots_gets_503_while_predict_is_served(
    tiny_model_dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EXPLAIN_CONCURRENCY=1, EXPLAIN_QUEUE=1: one computing, one waiting, the third refused at
    once; a /predict meanwhile is answered (it is not behind the /explain line)."""
    import asyncio
    import threading

    import httpx

    from app.main import create_app
    from app.model import Classifier
    from app.settings import Settings
    from tests.conftest import until

    release, entered, armed = threading.Event(), threading.Event(), threading.Event()
    predict = Classifier.predict

    def gated(classifier: Classifier, images, views_below=None):
        if armed.is_set() and len(images) >= 50:  # an /explain batch, not the warm-up: hold it
            entered.set()
            assert release.wait(60), "never released"
        return predict(classifier, images, views_below)

    monkeypatch.setattr(Classifier, "predict", gated)
    settings = Settings(
        model_dir=tiny_model_dir, explain_concurrency=1, explain_queue=1, inference_workers=2
    )
    app = create_app(settings)
    files = {"files": ("a.png", image_bytes(), "image/png")}
    async with app.router.lifespan_context(app):
        armed.set()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            first = asyncio.ensure_future(client.post("/explain", files=files))
            assert await asyncio.to_thread(entered.wait, 60), "the first never reached the model"
            second = asyncio.ensure_future(client.post("/explain", files=files))
            await until(lambda: app.state.explain_slots.waiting == 1, "the second never queued")
            third = await client.post("/explain", files=files)
            predicted = await client.post("/predict", files=files)
            release.set()
            answers = await asyncio.gather(first, second)

    assert third.status_code == 503 and third.headers["retry-after"] == "1"
    assert third.json()["error"]["code"] == "overloaded"
    assert predicted.status_code == 200
    assert [answer.status_code for answer in answers] == [200, 200]
