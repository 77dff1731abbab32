"""The Open Inference Protocol endpoints, through the real Triton client and raw HTTP."""

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import LABELS, binary_infer_body, bytes_elements, png_of
from tests.servers import serving

MODEL = "cifar10"


def pixels(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def predict_probabilities(client: Any, images: np.ndarray) -> np.ndarray:
    """/predict's answer for the same pixels, sent as lossless PNGs."""
    files = [("files", (f"{i}.png", png_of(image), "image/png")) for i, image in enumerate(images)]
    body = client.post("/predict", files=files).json()
    return np.array(
        [[p["probabilities"][label] for label in LABELS] for p in body["predictions"]],
        dtype=np.float32,
    )


@pytest.fixture(scope="module")
def triton_client(tiny_model_dir: Path) -> Iterator[triton.InferenceServerClient]:
    with serving(tiny_model_dir) as port:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        yield client
        client.close()


def triton_infer(
    client: Any,
    inputs: list[triton.InferInput],
    outputs: list[triton.InferRequestedOutput] | None = None,
    request_id: str = "",
    version: str = "",
) -> triton.InferResult:
    """tritonclient's own request and response codecs around the in-process app: its wire
    format, JSON or binary, without a socket."""
    body, json_size = triton.InferenceServerClient.generate_request_body(
        inputs, outputs, request_id
    )
    headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
    path = f"/v2/models/{MODEL}" + (f"/versions/{version}" if version else "") + "/infer"
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == 200, response.text
    length = response.headers.get("Inference-Header-Content-Length")
    return triton.InferResult.from_response_body(
        response.content, header_length=None if length is None else int(length)
    )


def tensor_input(images: np.ndarray, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=binary)
    return tensor


def test_server_and_model_health_metadata_and_infer_over_http(
    triton_client: triton.InferenceServerClient,
) -> None:
    """tritonclient against a real server; the tests below use its codecs in-process."""
    result = triton_client.infer(MODEL, [tensor_input(pixels(2), binary=True)])
    assert result.as_numpy("probabilities").shape == (2, len(LABELS))
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready(MODEL) and triton_client.is_model_ready(MODEL, "1")
    assert not triton_client.is_model_ready(MODEL, "7")
    assert "binary_tensor_data" in triton_client.get_server_metadata()["extensions"]

    metadata = triton_client.get_model_metadata(MODEL)

    assert metadata["name"] == MODEL and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
    assert metadata["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(LABELS)]}
    ]


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_infer_equals_predict_on_the_same_pixels(
    client: Any, binary_in: bool, binary_out: bool
) -> None:
    images = pixels(3, seed=int(binary_in) * 2 + int(binary_out))

    result = triton_infer(
        client,
        [tensor_input(images, binary_in)],
        outputs=[triton.InferRequestedOutput("probabilities", binary_data=binary_out)],
        request_id="req-1",
    )

    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (3, len(LABELS)) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, predict_probabilities(client, images), atol=1e-6)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (
        MODEL,
        "1",
        "req-1",
    )


def test_encoded_image_files_as_bytes_are_decoded_like_predict(client: Any) -> None:
    images = pixels(2, seed=5)
    files = triton.InferInput("images", [2], "BYTES")
    files.set_data_from_numpy(np.array([png_of(i) for i in images], dtype=np.object_))

    result = triton_infer(client, [files], version="1")

    np.testing.assert_allclose(
        result.as_numpy("probabilities"), predict_probabilities(client, images), atol=1e-6
    )


@pytest.mark.parametrize("binary", [True, False], ids=["binary-out", "json-out"])
def test_classification_extension_ranks_the_labels(client: Any, binary: bool) -> None:
    images = pixels(2, seed=9)
    requested = triton.InferRequestedOutput("probabilities", binary, class_count=3)

    result = triton_infer(client, [tensor_input(images, True)], outputs=[requested])

    ranked = result.as_numpy("probabilities")
    assert ranked.shape == (2, 3)
    expected = predict_probabilities(client, images)
    for row, answer in zip(ranked, expected, strict=True):
        parsed = [(item.decode() if binary else item).split(":") for item in row]
        indices = [int(index) for _, index, _ in parsed]
        assert indices == list(np.argsort(-answer)[:3])
        assert [label for *_, label in parsed] == [LABELS[i] for i in indices]
        np.testing.assert_allclose([float(p) for p, *_ in parsed], answer[indices], atol=1e-5)


def test_errors_reach_the_triton_client_as_its_exceptions(
    triton_client: triton.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException, match="not loaded") as missing:
        triton_client.infer(MODEL, [tensor_input(pixels(1), True)], model_version="7")
    assert missing.value.status() == "404"

    wrong = triton.InferInput("images", [1, 28, 28, 3], "UINT8")
    wrong.set_data_from_numpy(np.zeros((1, 28, 28, 3), np.uint8))
    with pytest.raises(InferenceServerException, match=r"\[-1, 32, 32, 3\]") as shape:
        triton_client.infer(MODEL, [wrong])
    assert shape.value.status() == "400"


def infer(client: Any, body: Any, *, path: str = f"/v2/models/{MODEL}/infer", **kwargs: Any):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=content, **kwargs)


def json_request(images: np.ndarray, **tensor: Any) -> dict[str, Any]:
    spec = {
        "name": "images",
        "shape": list(images.shape),
        "datatype": "UINT8",
        "data": images.reshape(-1).tolist(),
    }
    return {"inputs": [spec | tensor]}


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (json_request(pixels(1), shape=[1, 32, 32]), 400, "shape [1, 32, 32]"),
        (json_request(pixels(1), shape=[0, 32, 32, 3]), 400, "shape [0, 32, 32, 3]"),
        (json_request(pixels(1), datatype="FP32"), 400, "must be UINT8"),
        (json_request(pixels(1), datatype="INT64"), 400, "must be UINT8"),
        (json_request(pixels(1), data=[300] * 3072), 400, "integers 0..255"),
        (json_request(pixels(1), data=[0.5] * 3072), 400, "integers 0..255"),
        (json_request(pixels(1), data=["a"] * 3072), 400, "not a list of numbers"),
        (json_request(pixels(1), data=[1, 2, 3]), 400, "3 values for shape"),
        (json_request(pixels(1), name="pixels"), 400, "'images'"),
        (json_request(pixels(65)), 413, "MAX_IMAGES_PER_REQUEST"),
        (json_request(pixels(1)) | {"outputs": [{"name": "logits"}]}, 400, "'probabilities'"),
        (
            json_request(pixels(1))
            | {"outputs": [{"name": "probabilities", "parameters": {"classification": 11}}]},
            400,
            "classification",
        ),
        (json_request(pixels(1), shape=[-1, 32, 32, 3]), 400, "-1 is only for"),
        (json_request(pixels(1), data=["7"] * 3072), 400, "'7' (str)"),
        (json_request(pixels(1), data=[True] * 3072), 400, "True (bool)"),
        (json_request(pixels(1), data=[[7] * 3071 + [False]]), 400, "False (bool)"),
        ({"inputs": []}, 400, "inputs"),
        (b"{not json", 400, "invalid inference request"),
        (b"[]", 400, "invalid inference request"),
    ],
)
def test_malformed_requests_get_a_4xx_in_the_protocols_shape(
    client: Any, body: Any, status: int, words: str
) -> None:
    response = infer(client, body)

    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and words in response.json()["error"]


def test_binary_sizes_must_add_up(client: Any) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [1, 32, 32, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": 3072},
                }
            ]
        }
    ).encode()
    cases = [
        (header + bytes(3071), str(len(header)), "overruns"),
        (header + bytes(3073), str(len(header)), "1 bytes after"),
        (header + bytes(3072), str(len(header) + 10_000), "the body has"),
        (header + bytes(3072), "twelve", "not an integer"),
    ]
    for body, length, words in cases:
        response = infer(client, body, headers={"Inference-Header-Content-Length": length})
        assert response.status_code == 400 and words in response.json()["error"], response.text


def infer_binary(client: Any, shape: list[int], datatype: str, raw: bytes) -> Any:
    body, headers = binary_infer_body(shape, datatype, raw)
    return infer(client, body, headers=headers)


def test_truncated_bytes_elements_are_refused(client: Any) -> None:
    response = infer_binary(client, [1], "BYTES", struct.pack("<I", 100) + b"short")

    assert response.status_code == 400 and "truncated" in response.json()["error"]


def test_a_bytes_element_that_is_not_an_image_names_it(client: Any) -> None:
    items = [png_of(pixels(1)[0]), b"plain text, not an image"]
    raw = bytes_elements(items)

    response = infer_binary(client, [2], "BYTES", raw)

    assert response.status_code == 415
    assert "images[1]" in response.json()["error"]


def test_unknown_models_and_versions_are_404(client: Any) -> None:
    assert infer(client, json_request(pixels(1)), path="/v2/models/mnist/infer").status_code == 404
    for version in ("2", "latest", "\u00b3", "\u0661"):  # superscript 3, Arabic-Indic 1
        response = infer(
            client, json_request(pixels(1)), path=f"/v2/models/{MODEL}/versions/{version}/infer"
        )
        assert response.status_code == 404 and "error" in response.json()
    missing = infer(client, json_request(pixels(1)), path=f"/v2/models/{MODEL}/versions/2/infer")
    assert "version 2" in missing.json()["error"]
    assert client.get("/v2/models/mnist").status_code == 404


def test_api_key_guards_the_models_but_not_health(make_client: Any) -> None:
    client = make_client(api_key="s3cret")

    assert client.get("/v2/health/ready").status_code == 200
    refused = infer(client, json_request(pixels(1)))
    assert refused.status_code == 401 and set(refused.json()) == {"error"}
    allowed = infer(client, json_request(pixels(1)), headers={"X-API-Key": "s3cret"})
    assert allowed.status_code == 200


def test_body_over_the_upload_limit_is_413_in_the_protocols_shape(make_client: Any) -> None:
    client = make_client(max_upload_bytes=4096)

    response = infer(client, json_request(pixels(2)))

    assert response.status_code == 413 and set(response.json()) == {"error"}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (json_request(pixels(1), shape=[1, 28, 28, 3]), "[-1, 32, 32, 3]"),
        (json_request(pixels(1), shape=[1, 32, 32, 3, 1]), "[-1, 32, 32, 3]"),
        (json_request(pixels(1), datatype="BYTES", shape=[1], data=["x"]), "as binary data"),
        ({"inputs": [{"name": "images", "datatype": "UINT8", "data": []}]}, "inputs.0.shape"),
    ],
)
def test_wrong_shapes_and_kinds_are_a_400_naming_what_is_wrong(
    client: Any, body: Any, words: str
) -> None:
    response = infer(client, body)

    assert response.status_code == 400 and words in response.json()["error"], response.text


def test_nested_json_data_is_read_like_flat_data(client: Any) -> None:
    images = pixels(2, seed=3)
    flat = infer(client, json_request(images)).json()["outputs"][0]["data"]

    nested = infer(client, json_request(images, data=images.tolist()))

    assert nested.status_code == 200, nested.text
    assert nested.json()["outputs"][0]["data"] == flat
    assert len(flat) == 2 * len(LABELS)  # the answer is flat too, row-major


def test_the_json_bound_is_exactly_the_largest_request_there_can_be(make_client: Any) -> None:
    """Two images at most: every value as `255, ` (5 bytes) plus 64 KiB for the rest."""
    client = make_client(max_images_per_request=2)
    limit = 2 * 32 * 32 * 3 * 5 + 64 * 1024
    body = json.dumps(json_request(pixels(1))).encode()

    at_limit = infer(client, body + b" " * (limit - len(body)))
    over = infer(client, body + b" " * (limit + 1 - len(body)))

    assert at_limit.status_code == 200, at_limit.text
    assert over.status_code == 413 and f"more than {limit}" in over.json()["error"]


def test_a_json_only_body_may_state_its_own_length(client: Any) -> None:
    body = json.dumps(json_request(pixels(1))).encode()

    response = infer(client, body, headers={"Inference-Header-Content-Length": str(len(body))})

    assert response.status_code == 200, response.text


def test_request_level_binary_output_is_honoured(client: Any) -> None:
    asked = json_request(pixels(1)) | {"parameters": {"binary_data_output": True}}

    binary = infer(client, asked)
    plain = infer(client, json_request(pixels(1)))

    length = int(binary.headers["Inference-Header-Content-Length"])
    assert len(binary.content) == length + len(LABELS) * 4  # ten float32 after the JSON
    assert "Inference-Header-Content-Length" not in plain.headers
    assert len(plain.json()["outputs"][0]["data"]) == len(LABELS)


@pytest.mark.parametrize(
    ("raw", "shape", "words"),
    [
        (b"\x01\x00", [1], "truncated BYTES element"),  # not even a length prefix
        (struct.pack("<I", 0xFFFFFFFF) + b"tiny", [1], "truncated BYTES element"),
        (bytes_elements([b"a", b"b"]), [3], "2 elements for shape [3]"),
    ],
)
def test_malformed_bytes_tensors_are_a_400(client: Any, raw: bytes, shape: list, words: str):
    response = infer_binary(client, shape, "BYTES", raw)

    assert response.status_code == 400 and words in response.json()["error"], response.text


def test_uint8_binary_data_of_the_wrong_length_is_a_400(client: Any) -> None:
    response = infer_binary(client, [1, 32, 32, 3], "UINT8", bytes(3071))

    assert response.status_code == 400 and "3072 expected" in response.json()["error"]


@pytest.mark.parametrize("size", ["3072", True, -1, 2.5])
def test_a_binary_data_size_that_is_not_a_byte_count_is_a_400(client: Any, size: Any) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [1, 32, 32, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()

    response = infer(
        client,
        header + bytes(3072),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )

    assert response.status_code == 400 and "byte count" in response.json()["error"]


@pytest.mark.parametrize(
    ("shape", "datatype", "raw"),
    [([0, 32, 32, 3], "UINT8", b""), ([0], "BYTES", b""), ([0, 1], "BYTES", b"")],
)
def test_a_batch_of_zero_images_is_a_400_for_binary_inputs(
    client: Any, shape: list[int], datatype: str, raw: bytes
) -> None:
    response = infer_binary(client, shape, datatype, raw)

    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"} and "a batch of 0 images" in response.json()["error"]


def test_a_batch_of_zero_images_is_a_400_for_json_data(client: Any) -> None:
    response = infer(client, json_request(pixels(1), shape=[0, 32, 32, 3], data=[]))

    assert response.status_code == 400 and "a batch of 0 images" in response.json()["error"]


@pytest.mark.parametrize(
    ("shape", "datatype", "raw"),
    [
        ([-1], "BYTES", bytes_elements([png_of(pixels(1)[0])])),
        ([1, -1], "BYTES", bytes_elements([png_of(pixels(1)[0])])),
        ([-1, 32, 32, 3], "UINT8", bytes(3072)),
    ],
)
def test_a_minus_one_in_a_request_shape_is_named(
    client: Any, shape: list[int], datatype: str, raw: bytes
) -> None:
    response = infer_binary(client, shape, datatype, raw)

    assert response.status_code == 400, response.text
    assert f"has shape {shape}: a request's shape gives every size" in response.json()["error"]


@pytest.mark.parametrize(
    ("shape", "datatype", "raw"),
    [
        ([65, 32, 32, 3], "UINT8", bytes(65 * 3072)),
        ([65], "BYTES", bytes_elements([b"x"] * 65)),
    ],
)
def test_one_image_past_the_limit_is_a_413_for_binary_inputs(
    client: Any, shape: list[int], datatype: str, raw: bytes
) -> None:
    response = infer_binary(client, shape, datatype, raw)

    assert response.status_code == 413 and "MAX_IMAGES_PER_REQUEST" in response.json()["error"]


def test_uint8_binary_at_the_limit_is_classified(client: Any) -> None:
    response = infer_binary(client, [64, 32, 32, 3], "UINT8", pixels(64).tobytes())

    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [64, len(LABELS)]
