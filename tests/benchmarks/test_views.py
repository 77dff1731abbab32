"""benchmarks.views' pure pieces: which configurations run, what a pass count means, the images
wrk cycles through, the servers' environment, the Pareto front. No server, no model."""

import argparse
import math

import numpy as np
import pytest
from PIL import Image

from benchmarks import views
from training.views import passes as adaptive_passes


def config(key: str) -> views.Config:
    return next(c for c in views.CONFIGS if c.key == key)


def test_adaptive_passes_are_one_view_plus_the_others_for_the_unsure_share() -> None:
    confidence = np.array([0.2, 0.5, 0.9, 0.99])

    assert adaptive_passes(confidence, 0.6, 6) == pytest.approx(1 + 5 * 0.5)
    assert adaptive_passes(confidence, 0.0, 6) == 1  # views=one
    assert adaptive_passes(confidence, math.inf, 6) == 6  # views=all


def test_a_version_s_views_come_from_its_own_record() -> None:
    fixed = {"serving": {"tta_level": 2, "forward_passes_per_image": 6}}
    adaptive = {"serving": {"views": {"passes": {"one": 1, "all": 6}}}}

    assert views.all_views(fixed) == 6
    assert views.all_views(adaptive) == 6
    assert views.all_views({}) == 1


def test_precisions_are_tried_in_order_where_servable_or_refused() -> None:
    assert views.precision_choices(config("v3-one"), ["bf16", "f32"]) == ["auto"]
    assert views.precision_choices(config("v3-one"), ["int8", "f32"]) == ["int8", "auto"]
    assert views.precision_choices(config("v3-default"), ["f32"]) == [None]
    with pytest.raises(views.Unservable, match="bf16"):
        views.precision_choices(config("v3-bf16"), ["int8", "f32"])


def test_labels_name_version_precision_and_views_and_the_new_default() -> None:
    assert views.label(config("v3-default"), None) == "cifar10/3 new default"
    assert views.label(config("v3-one"), "int8") == "cifar10/3 int8 views=one"
    assert views.label(config("v2-f32"), "f32") == "cifar10/2 f32"
    assert len({c.key for c in views.CONFIGS}) == len(views.CONFIGS)
    assert {views.NEW_DEFAULT, views.OLD_DEFAULT} <= {c.key for c in views.CONFIGS}


def test_the_png_list_holds_every_image_as_it_was(tmp_path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)

    listing = views.write_pngs(images, tmp_path)

    paths = listing.read_text().splitlines()
    assert len(paths) == 5
    for path, pixels in zip(paths, images, strict=True):
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert np.array_equal(np.asarray(image), pixels)


def test_the_service_inherits_no_setting_from_the_shell(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("WORKERS", "1")
    monkeypatch.setenv("INFERENCE_PRECISION", "bf16")
    monkeypatch.setenv("views", "one")

    default = views.service_env(tmp_path, None)
    chosen = views.service_env(tmp_path, "int8")

    assert not {"WORKERS", "INFERENCE_PRECISION", "INFERENCE_BACKEND", "views"} & set(default)
    assert default["MODEL_DIR"] == str(tmp_path)
    assert "PATH" in default
    assert (chosen["INFERENCE_BACKEND"], chosen["INFERENCE_PRECISION"]) == ("openvino", "int8")


def test_the_pareto_front_keeps_only_points_nothing_beats_on_both() -> None:
    points = [(100, 94.0), (300, 93.9), (200, 93.0), (50, 94.1), (300, 93.5)]

    assert views.pareto_front(points) == [1, 0, 3]


def test_flags_parse_and_refuse_what_they_cannot_run() -> None:
    assert [c.key for c in views.parse_configs("v3-all,v2-f32")] == ["v2-f32", "v3-all"]
    assert views.parse_configs("all") == list(views.CONFIGS)
    assert views.parse_concurrency("") == ()
    assert views.parse_concurrency("1,8") == (1, 8)
    with pytest.raises(argparse.ArgumentTypeError):
        views.parse_configs("v4-f32")
    with pytest.raises(argparse.ArgumentTypeError):
        views.parse_concurrency("0")
