"""Adaptive test-time views through the real app, on a small model exported with them.

The references are the exported signature called in TensorFlow, and the Keras network's own
views (training.export.view_logits), never the app's code. Within the app, the default answer
is compared with the same app's `one` and `all` answers: the same runtime and precision, so an
image's path is decided by the same one-view confidence the test reads.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.contract import ModelLoadError
from tests.conftest import FIXTURES, LABELS, add_int8, assert_served_like, precision

IMAGES = sorted((FIXTURES / "cifar10").glob("*.png"))
ONE_VIEW_T, ALL_VIEWS_T = 0.05, 0.2  # small: spreads the untrained model's confidences


def tiny_logits_model() -> Any:
    import keras

    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(6, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(len(LABELS)),
        ]
    )


def pixels() -> np.ndarray:
    from app.preprocessing import decode_image

    return np.stack([decode_image(path.read_bytes(), max_pixels=1 << 20) for path in IMAGES])


@pytest.fixture(scope="module")
def adaptive(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A version with adaptive views whose threshold splits the fixture images in two, and
    TensorFlow's answers for them on each path."""
    import tensorflow as tf

    from training.export import AdaptiveViews, export_model, view_logits, write_golden

    model = tiny_logits_model()
    x = pixels()
    one = tf.nn.softmax(view_logits(model, tf.constant(x, tf.float32), 0) / ONE_VIEW_T).numpy()
    every = tf.nn.softmax(view_logits(model, tf.constant(x, tf.float32), 2) / ALL_VIEWS_T).numpy()
    threshold = float(np.median(one.max(axis=1)))
    version_dir = tmp_path_factory.mktemp("adaptive") / "cifar10" / "1"
    export_model(
        model,
        version_dir,
        labels=LABELS,
        metadata={"name": "cifar10", "version": 1},
        tta_level=2,
        temperature=ALL_VIEWS_T,
        views=AdaptiveViews(all_views_below=threshold, one_view_temperature=ONE_VIEW_T),
    )
    write_golden(version_dir, x[:4])
    add_int8(version_dir)
    return {"dir": version_dir, "x": x, "one": one, "every": every, "threshold": threshold}


def post(client: Any, views: str | None = None) -> dict[str, Any]:
    files = [("files", (path.name, path.read_bytes(), "image/png")) for path in IMAGES]
    response = client.post("/predict", files=files, params={"views": views} if views else {})
    assert response.status_code == 200, response.text
    return response.json()


def table(answer: dict[str, Any]) -> np.ndarray:
    return np.array(
        [[p["probabilities"][label] for label in LABELS] for p in answer["predictions"]]
    )


@pytest.fixture
def served(make_client: Callable[..., Any], adaptive: dict[str, Any]) -> Any:
    return make_client(model_dir=adaptive["dir"].parent)


def test_one_and_all_serve_one_view_and_every_view(served: Any, adaptive: dict[str, Any]) -> None:
    """`all` is the six airbench views averaged (the Keras network's own), `one` the image alone,
    each with its own temperature, in the served precision's tolerance."""
    served_precision = served.get("/model").json()["runtime"]["precision"]
    one, every = post(served, "one"), post(served, "all")

    assert (one["views"], every["views"]) == ("one", "all")
    assert_served_like(table(one), adaptive["one"], served_precision)
    assert_served_like(table(every), adaptive["every"], served_precision)
    # The two paths must differ, or the tests below could not tell which one answered.
    assert np.abs(adaptive["one"] - adaptive["every"]).max() > 0.05


def test_an_unsure_image_gets_every_view_and_a_sure_one_one(
    served: Any, adaptive: dict[str, Any]
) -> None:
    """The default answers each image from one view when its one-view confidence reaches the
    version's threshold, else from every view; the images fall on both sides."""
    one, every = table(post(served, "one")), table(post(served, "all"))
    answer = post(served)
    auto = table(answer)
    confidence = one.max(axis=1)
    threshold = adaptive["threshold"]
    margin = 1e-4  # an image this close to the threshold could take either path

    sure, unsure = confidence >= threshold + margin, confidence < threshold - margin
    assert sure.any() and unsure.any(), "the fixture images must fall on both sides"
    assert answer["views"] == "auto"
    np.testing.assert_allclose(auto[sure], one[sure], atol=1e-6)
    np.testing.assert_allclose(auto[unsure], every[unsure], atol=1e-6)


def test_the_views_setting_is_the_default_and_a_request_overrides_it(
    make_client: Callable[..., Any], adaptive: dict[str, Any]
) -> None:
    client = make_client(model_dir=adaptive["dir"].parent, views="one")

    assert post(client)["views"] == "one"
    np.testing.assert_allclose(table(post(client)), table(post(client, "one")), atol=1e-6)
    np.testing.assert_allclose(table(post(client, "all")), table(post(client, "all")), atol=1e-6)
    assert post(client, "all")["views"] == "all"


def test_v2_infer_takes_views_as_a_parameter(served: Any) -> None:
    """The protocol's request parameter `views` answers as /predict's query does."""
    x = pixels()
    for views in ("one", "all"):
        body = {
            "parameters": {"views": views},
            "inputs": [
                {
                    "name": "images",
                    "shape": list(x.shape),
                    "datatype": "UINT8",
                    "data": x.ravel().tolist(),
                }
            ],
        }
        response = served.post("/v2/models/cifar10/infer", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["parameters"] == {"views": views}
        got = np.array(response.json()["outputs"][0]["data"], np.float32).reshape(len(x), -1)
        np.testing.assert_allclose(got, table(post(served, views)), atol=1e-6)

    body["parameters"] = {"views": "some"}
    refused = served.post("/v2/models/cifar10/infer", json=body)
    assert refused.status_code == 400
    assert "views" in refused.json()["error"]


def test_an_unknown_views_value_is_a_422_naming_the_choices(served: Any) -> None:
    files = [("files", ("cat.png", IMAGES[0].read_bytes(), "image/png"))]
    response = served.post("/predict", files=files, params={"views": "most"})

    assert response.status_code == 422
    assert "'auto', 'one' or 'all'" in response.text


def test_a_version_without_adaptive_views_serves_its_own_whatever_is_asked(client: Any) -> None:
    default, one = post(client), post(client, "one")

    assert default["views"] == one["views"] == "fixed"
    np.testing.assert_allclose(table(one), table(default), atol=1e-6)


def test_the_golden_check_covers_the_one_view_path(
    adaptive: dict[str, Any], tmp_path: Path
) -> None:
    """A runtime whose one-view answers drift is refused, though its every-view answers match:
    golden.npz holds both paths."""
    import shutil

    from app.model import load_classifier

    copy = tmp_path / "1"
    shutil.copytree(adaptive["dir"], copy)
    with np.load(copy / "golden.npz") as golden:
        arrays = dict(golden)
    np.savez(copy / "golden.npz", **{**arrays, "one_view": arrays["one_view"][:, ::-1]})

    load_classifier(adaptive["dir"], precision=precision())  # the original passes
    with pytest.raises(ModelLoadError, match="golden"):
        load_classifier(copy, precision=precision())


def test_explain_answers_with_the_views_asked(served: Any) -> None:
    """/explain takes /predict's `views`: its prediction is /predict's for the same choice
    (within 0.01: its batch holds the occluded copies too, which a lower precision may round
    otherwise; the two paths differ by more than 0.05, see above)."""
    files = [("files", (IMAGES[0].name, IMAGES[0].read_bytes(), "image/png"))]
    for views in ("one", "all"):
        explained = served.post("/explain", files=files, params={"views": views})
        assert explained.status_code == 200, explained.text
        predicted = served.post("/predict", files=files, params={"views": views}).json()
        got = explained.json()["explanations"][0]["probabilities"]
        expected = predicted["predictions"][0]["probabilities"]
        np.testing.assert_allclose(
            [got[label] for label in LABELS], [expected[label] for label in LABELS], atol=0.01
        )
