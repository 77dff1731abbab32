"""The peers' shared work (benchmarks/peers/common.py) matches this service's, without the peers.

LitServe and BentoML themselves live in their own venvs (benchmarks/peers/__init__.py) and are
exercised by `python -m benchmarks.run`, not here.
"""

import argparse
import json

import numpy as np
import pytest

from app.preprocessing import decode_image
from benchmarks.peers import common, parse_peers
from tests.conftest import LABELS, image_bytes


@pytest.mark.parametrize("size", [(32, 32), (100, 80)])
def test_peers_decode_and_resize_as_this_service_does(size: tuple[int, int]) -> None:
    data = image_bytes("PNG", size=size)

    assert np.array_equal(common.to_pixels(data), decode_image(data, max_pixels=10**8))


def test_answers_name_the_most_probable_label_and_every_probability() -> None:
    probabilities = np.eye(10, dtype=np.float32)[[3, 8]] * 0.9 + 0.01

    answers = json.loads(json.dumps(common.answers(probabilities, tuple(LABELS))))

    assert [a["label"] for a in answers] == ["cat", "ship"]
    assert answers[0]["probabilities"]["cat"] == pytest.approx(0.91)
    assert set(answers[1]["probabilities"]) == set(LABELS)


def test_the_signature_is_called_in_chunks_of_at_most_256_images(
    tiny_model_dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tensorflow as tf

    calls: list[int] = []  # the batch size of every real signature call
    load = tf.saved_model.load

    class Spied:
        def __init__(self, path: str) -> None:
            self.loaded = load(path)  # kept: the signature holds only weak references
            real = self.loaded.signatures["serving_default"]

            def signature(images):
                calls.append(int(images.shape[0]))
                return real(images=images)

            self.signatures = {"serving_default": signature}

    monkeypatch.setattr(tf.saved_model, "load", Spied)
    predict, labels = common.load_model(tiny_model_dir, threads=1)
    images = np.random.default_rng(0).integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    calls.clear()  # the warm-up call at load

    together = predict(images)

    assert calls == [256, 44]
    assert labels == tuple(LABELS)
    assert together.shape == (300, 10)
    np.testing.assert_allclose(together[256:], predict(images[256:]), atol=1e-6)
    np.testing.assert_allclose(together.sum(axis=1), 1, atol=1e-5)


def test_peers_are_chosen_by_name_or_none() -> None:
    assert parse_peers("bentoml, litserve") == ["bentoml", "litserve"]
    assert parse_peers("none") == []
    with pytest.raises(argparse.ArgumentTypeError, match="unknown peer torchserve"):
        parse_peers("torchserve")


def test_the_http_floor_decodes_every_upload_and_answers_each() -> None:
    """The floor does the peers' work per upload: a file Pillow cannot read fails it."""
    from fastapi.testclient import TestClient

    from benchmarks.http_floor import app

    client = TestClient(app, raise_server_exceptions=False)
    pngs = [("files", (name, image_bytes("PNG", seed=seed))) for seed, name in enumerate("ab")]

    answered = client.post("/predict", files=pngs)
    refused = client.post("/predict", files=[*pngs, ("files", ("c.png", b"not an image"))])

    assert answered.status_code == 200
    assert [set(p["probabilities"]) for p in answered.json()["predictions"]] == [set(LABELS)] * 2
    assert refused.status_code == 500
