"""The hostile-upload corpus: each file gets a prediction or a 4xx JSON error, never a 5xx."""

import asyncio
import sys
import threading

import httpx
import pytest

from app.main import create_app
from app.model import Classifier
from app.settings import Settings
from tests.conftest import REPO
from tests.hostile.make_corpus import CORPUS, EXPECTED, corpus


def test_corpus_on_disk_is_what_the_script_writes() -> None:
    on_disk = {path.name: path.read_bytes() for path in CORPUS.iterdir()}

    assert on_disk == corpus()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_hostile_file_is_answered_correctly(client, name: str) -> None:
    response = client.post("/predict", files={"files": (name, (CORPUS / name).read_bytes())})

    expected = EXPECTED[name]
    if expected == 200:
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["filename"] == name
    else:
        status, code = expected
        assert response.status_code == status, response.text
        assert response.json()["error"] == {
            "code": code,
            "message": response.json()["error"]["message"],
            "file": name,
        }
    assert client.get("/health").status_code == 200


@pytest.mark.anyio
async def test_health_answers_while_the_corpus_is_in_flight(
    tiny_model_dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole corpus is sent at once and the model is held on its first batch, so /health
    is asked while uploads are certainly still being processed."""
    held = threading.Event()
    entered = threading.Event()
    predict = Classifier.predict
    armed = False

    def gated(classifier: Classifier, images, views_below=None):
        if armed:
            entered.set()
            assert held.wait(60), "never released"
        return predict(classifier, images, views_below)

    monkeypatch.setattr(Classifier, "predict", gated)
    app = create_app(Settings(model_dir=tiny_model_dir))
    async with app.router.lifespan_context(app):
        armed = True
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            uploads = [
                asyncio.ensure_future(
                    client.post("/predict", files={"files": (p.name, p.read_bytes())})
                )
                for p in sorted(CORPUS.iterdir())
            ]
            assert await asyncio.to_thread(entered.wait, 60), "no upload reached the model"
            health = [await client.get("/health") for _ in range(20)]
            pending = sum(not upload.done() for upload in uploads)
            held.set()
            responses = await asyncio.gather(*uploads)

    assert pending > 0  # health was asked while uploads were in flight
    assert [r.status_code for r in health] == [200] * 20
    assert all(r.status_code < 500 for r in responses)


def test_60_mb_body_is_refused(client) -> None:
    huge = b"\xff\xd8\xff" + b"\x00" * (60 * 1024 * 1024)

    response = client.post("/predict", files={"files": ("huge.jpg", huge, "image/jpeg")})

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"


def test_path_traversal_and_long_unicode_filenames_are_only_echoed(client) -> None:
    png = (CORPUS / "one_pixel.png").read_bytes()
    long_name = "猫" * 300 + ".png"
    files = [("files", ("../../etc/passwd", png)), ("files", (long_name, png))]

    response = client.post("/predict", files=files)

    assert response.status_code == 200
    names = [p["filename"] for p in response.json()["predictions"]]
    assert names == ["../../etc/passwd", long_name[:255]]


def test_two_thousand_tiny_parts_are_refused(client) -> None:
    files = [("files", (f"{i}.png", b"\x89PNG")) for i in range(2000)]

    response = client.post("/predict", files=files)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_parts"


def test_error_bodies_leak_no_internals(client) -> None:
    # Wherever this clone lives: its path, the interpreter's and the packages' must not show.
    internals = ["Traceback", str(REPO), sys.prefix, "site-packages", 'File "']
    for name in EXPECTED:
        body = client.post("/predict", files={"files": (name, (CORPUS / name).read_bytes())}).text
        leaked = [marker for marker in internals if marker in body]
        assert not leaked, f"{name}: the error body shows {leaked}"
