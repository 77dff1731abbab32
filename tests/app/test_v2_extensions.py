"""The Open Inference Protocol's extensions beyond infer: model configuration, statistics, the
repository index and compressed bodies, through Triton's own client against a real server."""

import asyncio
import gzip
import json
import shutil
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from app import inference_protocol as oip
from app.errors import ApiError
from app.limits import inflate
from app.metrics import Metrics
from tests.conftest import LABELS, break_version, bytes_elements, png_of
from tests.servers import serving

A_PNG = png_of(np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8))

MODEL = "cifar10"
ADMIN = {"X-API-Key": "admin"}
MAX_UPLOAD_BYTES = 256 * 1024


def pixels(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def tensor_input(images: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=True)
    return tensor


def add_version(model_dir: Path, source: Path, version: int) -> Path:
    """A copy of `source` as version `version` (its metadata says so)."""
    target = model_dir / str(version)
    shutil.copytree(source, target)
    metadata = json.loads((target / "metadata.json").read_text())
    (target / "metadata.json").write_text(json.dumps(metadata | {"version": version}))
    return target


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 1 serves; version 2 is broken, so it is refused."""
    root = tmp_path_factory.mktemp("extensions") / MODEL
    shutil.copytree(tiny_model_dir / "1", root / "1")
    break_version(add_version(root, tiny_model_dir / "1", 2))
    return root


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[tuple[triton.InferenceServerClient, int]]:
    settings = {
        "ADMIN_API_KEY": "admin",
        "MODEL_POLL_S": "0",
        "MAX_BATCH_SIZE": "128",
        "MAX_BATCH_DELAY_MS": "3.5",
        "MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
    }
    with serving(model_dir, **settings) as port:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        yield client, port
        client.close()


def test_model_config_is_tritons_and_comes_from_the_model_and_settings(server: Any) -> None:
    client, _ = server
    metadata = client.get_model_metadata(MODEL)

    config = client.get_model_config(MODEL)

    assert config == {
        "name": MODEL,
        "platform": metadata["platform"],
        "backend": metadata["parameters"]["backend"],
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": 128,
        "input": [{"name": "images", "data_type": "TYPE_UINT8", "dims": [32, 32, 3]}],
        "output": [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [len(LABELS)]}],
        "dynamic_batching": {"max_queue_delay_microseconds": 3500},
    }
    assert client.get_model_config(MODEL, "1") == config
    with pytest.raises(InferenceServerException, match="not loaded") as missing:
        client.get_model_config(MODEL, "2")  # refused, so not loaded
    assert missing.value.status() == "404"


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("all", {"all": {}}),
        ("latest:3", {"latest": {"num_versions": 3}}),
        ("specific:1,4", {"specific": {"versions": [1, 4]}}),
    ],
)
def test_model_config_writes_the_version_policy_as_triton_does(
    make_client: Any, policy: str, expected: dict[str, Any]
) -> None:
    client = make_client(model_version_policy=policy)

    config = client.get(f"/v2/models/{MODEL}/config").json()

    assert config["version_policy"] == expected


def test_statistics_count_every_inference_route_per_version(server: Any) -> None:
    client, port = server
    before = client.get_inference_statistics(MODEL)["model_stats"][0]
    started_ms = time.time() * 1000
    client.infer(MODEL, [tensor_input(pixels(2))])
    client.infer(MODEL, [tensor_input(pixels(3))], model_version="1")
    wrong = triton.InferInput("images", [1, 32, 32, 3], "UINT8")
    wrong.set_data_from_numpy(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(InferenceServerException):  # a 400: counted as a failure
        client.infer(MODEL, [wrong], outputs=[triton.InferRequestedOutput("logits")])
    png = httpx.post(f"http://127.0.0.1:{port}/predict", files={"files": A_PNG}, timeout=30)
    assert png.status_code == 200, png.text

    stats = client.get_inference_statistics(MODEL)

    [entry] = stats["model_stats"]
    assert (entry["name"], entry["version"]) == (MODEL, "1")
    counts = entry["inference_stats"]
    assert counts["success"]["count"] - before["inference_stats"]["success"]["count"] == 3
    assert counts["fail"]["count"] - before["inference_stats"]["fail"]["count"] == 1
    assert counts["success"]["ns"] > before["inference_stats"]["success"]["ns"]
    assert entry["inference_count"] - before["inference_count"] == 2 + 3 + 1
    # the three answered requests ran 1 to 3 model calls (the batcher may merge them)
    assert 1 <= entry["execution_count"] - before["execution_count"] <= 3
    assert entry["inference_stats"]["compute_infer"]["ns"] > 0
    assert entry["last_inference"] >= started_ms - 1
    assert client.get_inference_statistics(MODEL, "1")["model_stats"] == [entry]
    assert client.get_inference_statistics()["model_stats"] == [entry]  # every model
    with pytest.raises(InferenceServerException, match="not loaded"):
        client.get_inference_statistics(MODEL, "2")
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    lines = [
        line
        for line in metrics.splitlines()
        if line.startswith("model_inference_request_duration_seconds_count")
    ]
    success = counts["success"]["count"]
    assert (
        f'model_inference_request_duration_seconds_count{{outcome="success",version="1"}} '
        f"{float(success)}" in lines
    ), lines


def test_repository_index_lists_every_version_folder_and_why(server: Any) -> None:
    client, _ = server
    refused = {"name": MODEL, "version": "2", "state": "UNAVAILABLE"}

    index = client.get_model_repository_index(headers=ADMIN)

    assert [entry | {"reason": ""} for entry in index] == [
        refused | {"reason": ""},
        {"name": MODEL, "version": "1", "state": "READY", "reason": ""},
    ]
    assert index[0]["reason"].startswith("refused: ") and index[1]["reason"] == ""
    try:
        client.unload_model(MODEL, headers=ADMIN)
        unloaded = client.get_model_repository_index(headers=ADMIN)
        assert unloaded[1] == {**index[1], "state": "UNAVAILABLE", "reason": "unloaded"}
    finally:
        client.load_model(MODEL, headers=ADMIN)
    assert client.get_model_repository_index(headers=ADMIN) == index
    with pytest.raises(InferenceServerException) as keyless:
        client.get_model_repository_index()
    assert keyless.value.status() == "401"


def test_repository_index_names_a_version_the_policy_leaves_out(
    make_client: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    model_dir = tmp_path / MODEL
    shutil.copytree(tiny_model_dir / "1", model_dir / "1")
    add_version(model_dir, tiny_model_dir / "1", 2)
    client = make_client(model_dir=model_dir, admin_api_key="admin", model_poll_s=0)

    index = client.post("/v2/repository/index", headers=ADMIN).json()
    ready = client.post("/v2/repository/index", headers=ADMIN, json={"ready": True}).json()

    assert [(entry["version"], entry["state"]) for entry in index] == [
        ("2", "READY"),
        ("1", "UNAVAILABLE"),
    ]
    assert index[1]["reason"] == "not chosen by MODEL_VERSION_POLICY=latest:1"
    assert ready == index[:1]
    bad = client.post("/v2/repository/index", headers=ADMIN, content=b"[1]")
    assert bad.status_code == 400 and set(bad.json()) == {"error"}


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_answers_through_tritonclient(server: Any, algorithm: str) -> None:
    client, _ = server
    images = pixels(4, seed=7)
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=True)]
    plain = client.infer(MODEL, [tensor_input(images)], outputs=outputs)

    compressed = client.infer(
        MODEL,
        [tensor_input(images)],
        outputs=outputs,
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )

    np.testing.assert_array_equal(
        compressed.as_numpy("probabilities"), plain.as_numpy("probabilities")
    )


def test_a_compression_bomb_through_tritonclient_is_a_413(server: Any) -> None:
    """A megabyte of zeros in one BYTES element: a kilobyte gzipped, 4x the upload limit."""
    client, _ = server
    bomb = triton.InferInput("images", [1], "BYTES")
    bomb.set_data_from_numpy(np.array([bytes(4 * MAX_UPLOAD_BYTES)], dtype=np.object_))

    with pytest.raises(InferenceServerException, match="MAX_UPLOAD_BYTES") as refused:
        client.infer(MODEL, [bomb], request_compression_algorithm="gzip")

    assert refused.value.status() == "413"


def test_a_compression_bomb_is_a_413_in_the_protocols_shape(make_client: Any) -> None:
    client = make_client(max_upload_bytes=64 * 1024)
    body = gzip.compress(bytes(16 * 1024 * 1024))  # 16 MiB of zeros in ~16 kB

    response = client.post(
        f"/v2/models/{MODEL}/infer", content=body, headers={"Content-Encoding": "gzip"}
    )

    assert response.status_code == 413 and set(response.json()) == {"error"}
    assert "inflates past 65536 bytes" in response.json()["error"]


def test_inflating_never_holds_more_than_the_limit() -> None:
    """64 MiB of zeros, 64 kB gzipped, against a 1 MiB limit: refused having held ~1 MiB."""
    limit = 1024 * 1024
    compressed = gzip.compress(bytes(64 * 1024 * 1024))

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(compressed), 16 * 1024):
            yield compressed[start : start + 16 * 1024]

    tracemalloc.start()
    try:
        with pytest.raises(ApiError) as refused:
            asyncio.run(inflate(chunks(), "gzip", limit))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert refused.value.status_code == 413
    assert peak < 4 * limit, f"held {peak} bytes inflating against a {limit}-byte limit"


@pytest.mark.parametrize(
    ("encoding", "body", "status", "words"),
    [
        ("br", b"\x1b\x00", 415, "Content-Encoding 'br' is not accepted"),
        ("gzip", b"not gzip at all", 400, "cannot be inflated"),
        ("gzip", gzip.compress(b'{"inputs": []}')[:-12], 400, "truncated"),
        ("deflate", zlib.compress(b"{not json"), 400, "invalid inference request"),
    ],
)
def test_bad_encodings_and_bad_compressed_bodies_are_a_4xx(
    client: Any, encoding: str, body: bytes, status: int, words: str
) -> None:
    response = client.post(
        f"/v2/models/{MODEL}/infer", content=body, headers={"Content-Encoding": encoding}
    )

    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and words in response.json()["error"]


def test_a_gzip_answer_keeps_the_binary_header_length_of_the_json(client: Any) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(bytes_elements([A_PNG]))},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    body = header + bytes_elements([A_PNG])
    headers = {"Inference-Header-Content-Length": str(len(header)), "Accept-Encoding": "gzip"}

    with client.stream("POST", f"/v2/models/{MODEL}/infer", content=body, headers=headers) as raw:
        compressed = b"".join(raw.iter_raw())
        answer_headers = raw.headers

    assert answer_headers["Content-Encoding"] == "gzip"
    inflated = gzip.decompress(compressed)
    length = int(answer_headers["Inference-Header-Content-Length"])
    assert json.loads(inflated[:length])["outputs"][0]["parameters"]["binary_data_size"] == 40
    assert len(inflated) == length + 4 * len(LABELS)


def test_statistics_of_a_version_are_its_own_counters() -> None:
    """Requests, images and model calls of version 1, beside those of version 2."""
    metrics = Metrics()
    metrics.record_inference(1, images=4, seconds=0.5, ok=True)
    metrics.record_inference(1, images=2, seconds=0.25, ok=False)
    metrics.record_batch(1, images=4, seconds=0.125)
    metrics.record_inference(2, images=8, seconds=1.0, ok=True)
    metrics.record_batch(2, images=8, seconds=0.75)

    entry = oip.model_statistics(MODEL, "1", metrics.version_stats(1))

    last = entry.pop("last_inference")
    assert abs(last - time.time() * 1000) < 60_000
    assert entry == {
        "name": MODEL,
        "version": "1",
        "inference_count": 4,
        "execution_count": 1,
        "inference_stats": {
            "success": {"count": 1, "ns": 500_000_000},
            "fail": {"count": 1, "ns": 250_000_000},
            "queue": {"count": 1, "ns": 0},  # every phase counts the successful requests
            "compute_input": {"count": 1, "ns": 0},
            "compute_infer": {"count": 1, "ns": 125_000_000},  # the model calls' time
            "compute_output": {"count": 1, "ns": 0},
        },
        "batch_stats": [],
    }
    assert oip.model_statistics(MODEL, "3", metrics.version_stats(3))["last_inference"] == 0


def test_statistics_sum_every_worker_process(tiny_model_dir: Path) -> None:
    """With WORKERS=2 the answer counts what both processes did, whichever answers: a client
    that subtracts two reads (perf_analyzer) must never see a count go back."""
    with serving(tiny_model_dir, WORKERS="2") as port:
        url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/stats"

        def images_counted() -> int:
            return httpx.get(url, timeout=30).json()["model_stats"][0]["inference_count"]

        before = images_counted()
        for _ in range(12):  # a new connection each: the kernel spreads them over the processes
            answer = httpx.post(f"http://127.0.0.1:{port}/predict", files={"files": A_PNG})
            assert answer.status_code == 200, answer.text
        counts = [images_counted() for _ in range(6)]

    assert counts == [before + 12] * 6
