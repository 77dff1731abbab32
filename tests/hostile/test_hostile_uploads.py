"""The hostile-upload corpus: each file gets a prediction or a 4xx JSON error, never a 5xx."""

import asyncio

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
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
async def test_health_answers_during_the_whole_corpus(tiny_model_dir) -> None:
    app = create_app(Settings(model_dir=tiny_model_dir))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            uploads = [
                client.post("/predict", files={"files": (p.name, p.read_bytes())})
                for p in sorted(CORPUS.iterdir())
            ]
            health = [client.get("/health") for _ in range(20)]
            responses = await asyncio.gather(*uploads, *health)

    assert all(r.status_code < 500 for r in responses)
    assert all(r.status_code == 200 for r in responses[len(uploads) :])


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
    for name in EXPECTED:
        body = client.post("/predict", files={"files": (name, (CORPUS / name).read_bytes())}).text
        assert "Traceback" not in body and "/work/" not in body and "site-packages" not in body
