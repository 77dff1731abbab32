"""The Open Inference Protocol over gRPC, through Triton's own client (`tritonclient.grpc`) and
its generated stub, against a real `python -m app`: each answer checked against what HTTP
answers for the same request."""

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from google.protobuf import json_format
from google.protobuf.message import Message
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.app.test_v2_extensions import add_version, pixels
from tests.conftest import LABELS, break_version, png_of
from tests.servers import free_port, serving, start_server, wait_until_healthy

MODEL = "cifar10"
KEY = {"x-api-key": "key"}
ADMIN = {"x-api-key": "admin"}
MAX_UPLOAD_BYTES = 256 * 1024
MAX_IMAGES = 4


def tensor(images: np.ndarray, datatype: str = "UINT8") -> triton.InferInput:
    sent = triton.InferInput("images", list(images.shape), datatype)
    sent.set_data_from_numpy(images)
    return sent


def files(items: list[bytes]) -> triton.InferInput:
    sent = triton.InferInput("images", [len(items)], "BYTES")
    sent.set_data_from_numpy(np.array(items, dtype=np.object_))
    return sent


def status_of(call: Any) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and message a call that must fail ends with."""
    with pytest.raises(InferenceServerException) as failed:
        call()
    return grpc.StatusCode[failed.value.status().removeprefix("StatusCode.")], str(
        failed.value.message()
    )


def as_message(answer: dict[str, Any], message: Message) -> Message:
    """An HTTP answer's JSON as the protobuf message gRPC answers with (fields that message
    does not have, such as the metadata's `parameters`, left out)."""
    return json_format.ParseDict(answer, message, ignore_unknown_fields=True)


class Server:
    def __init__(self, http_port: int, grpc_port: int) -> None:
        self.http = f"http://127.0.0.1:{http_port}"
        self.client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        self.http_client = triton_http.InferenceServerClient(f"127.0.0.1:{http_port}")
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.grpc_port = grpc_port

    def predict(self, uploads: list[bytes]) -> np.ndarray:
        """/predict's probabilities, in label order."""
        response = httpx.post(
            f"{self.http}/predict",
            files=[("files", (f"{i}.png", data)) for i, data in enumerate(uploads)],
            headers={"X-API-Key": "key"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        rows = response.json()["predictions"]
        return np.array([[row["probabilities"][label] for label in LABELS] for row in rows])

    def close(self) -> None:
        self.client.close()
        self.http_client.close()
        self.channel.close()


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 1 serves; version 2 is broken, so it is refused."""
    root = tmp_path_factory.mktemp("grpc") / MODEL
    add_version(root, tiny_model_dir / "1", 1)
    break_version(add_version(root, tiny_model_dir / "1", 2))
    return root


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[Server]:
    grpc_port = free_port()
    settings = {
        "GRPC_PORT": str(grpc_port),
        "API_KEY": "key",
        "ADMIN_API_KEY": "admin",
        "MODEL_POLL_S": "0",
        "MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "MAX_UPLOAD_BYTES_IN_FLIGHT": str(MAX_UPLOAD_BYTES),
        "MAX_IMAGES_PER_REQUEST": str(MAX_IMAGES),
    }
    with serving(model_dir, **settings) as port:
        served = Server(port, grpc_port)
        yield served
        served.close()


def test_health_and_metadata_answer_as_on_http(server: Server) -> None:
    client, http = server.client, server.http_client

    assert client.is_server_live() and client.is_server_ready()  # open, as on HTTP
    assert client.get_server_metadata() == as_message(
        http.get_server_metadata(), service_pb2.ServerMetadataResponse()
    )
    over_http = http.get_model_metadata(MODEL, headers={"X-API-Key": "key"})
    assert client.get_model_metadata(MODEL, headers=KEY) == as_message(
        over_http, service_pb2.ModelMetadataResponse()
    )
    assert over_http["inputs"][0]["shape"] == [-1, 32, 32, 3]
    assert client.is_model_ready(MODEL, headers=KEY)
    assert client.is_model_ready(MODEL, "1", headers=KEY)
    assert not client.is_model_ready(MODEL, "2", headers=KEY)  # refused: broken
    assert not client.is_model_ready("nope", headers=KEY)


def test_model_config_is_the_http_one(server: Server) -> None:
    config = server.client.get_model_config(MODEL, headers=KEY).config

    over_http = server.http_client.get_model_config(MODEL, headers={"X-API-Key": "key"})
    assert config == as_message(over_http, triton.model_config_pb2.ModelConfig())
    assert list(config.input[0].dims) == [32, 32, 3]


def test_raw_tensors_get_what_predict_answers_for_the_same_pixels(server: Server) -> None:
    images = pixels(3, seed=1)

    answer = server.client.infer(MODEL, [tensor(images)], headers=KEY, request_id="r-7")

    got = answer.as_numpy("probabilities")
    np.testing.assert_allclose(got, server.predict([png_of(x) for x in images]), atol=1e-5)
    response = answer.get_response()
    assert (response.model_name, response.model_version, response.id) == (MODEL, "1", "r-7")
    assert response.parameters["views"].string_param == "fixed"  # the tiny model's
    assert list(response.outputs[0].shape) == [3, len(LABELS)]


def test_typed_contents_answer_as_raw_ones(server: Server) -> None:
    images = pixels(2, seed=2)
    raw = server.client.infer(MODEL, [tensor(images)], headers=KEY).as_numpy("probabilities")
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    sent = request.inputs.add(name="images", datatype="UINT8", shape=list(images.shape))
    sent.contents.uint_contents.extend(images.ravel().tolist())

    answer = server.stub.ModelInfer(request, metadata=tuple(KEY.items()), timeout=30)

    typed = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(2, len(LABELS))
    np.testing.assert_array_equal(typed, raw)


@pytest.mark.parametrize(
    ("field", "values", "words"),
    [
        ("int_contents", [1] * 3072, "values go in contents.uint_contents, not in contents.int"),
        ("uint_contents", [256] * 3072, "integers 0..255"),
        ("uint_contents", [1] * 3071, "3071 values for shape [1, 32, 32, 3]"),
    ],
)
def test_bad_typed_contents_are_invalid_arguments(
    server: Server, field: str, values: list[int], words: str
) -> None:
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    sent = request.inputs.add(name="images", datatype="UINT8", shape=[1, 32, 32, 3])
    getattr(sent.contents, field).extend(values)

    with pytest.raises(grpc.RpcError) as refused:
        server.stub.ModelInfer(request, metadata=tuple(KEY.items()), timeout=30)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in refused.value.details()


def test_image_files_as_bytes_get_what_predict_answers(server: Server) -> None:
    uploads = [png_of(x) for x in pixels(2, seed=3)]

    answer = server.client.infer(MODEL, [files(uploads)], headers=KEY)

    np.testing.assert_allclose(answer.as_numpy("probabilities"), server.predict(uploads), atol=1e-5)
    code, message = status_of(
        lambda: server.client.infer(MODEL, [files([uploads[0], b"not an image"])], headers=KEY)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "images[1]" in message


def test_classification_ranks_the_labels_as_triton_does(server: Server) -> None:
    images = pixels(2, seed=4)
    probabilities = server.client.infer(MODEL, [tensor(images)], headers=KEY).as_numpy(
        "probabilities"
    )

    ranked = server.client.infer(
        MODEL,
        [tensor(images)],
        outputs=[triton.InferRequestedOutput("probabilities", class_count=3)],
        headers=KEY,
    ).as_numpy("probabilities")

    assert ranked.shape == (2, 3)
    for row, answers in zip(probabilities, ranked, strict=True):
        best = np.argsort(-row)[:3]
        assert [a.decode().split(":")[1:] for a in answers] == [[str(i), LABELS[i]] for i in best]
        np.testing.assert_allclose([float(a.split(b":")[0]) for a in answers], row[best], atol=1e-6)


def test_statistics_are_the_http_ones_and_count_grpc_calls(server: Server) -> None:
    before = server.client.get_inference_statistics(MODEL, headers=KEY, as_json=True)
    server.client.infer(MODEL, [tensor(pixels(2))], headers=KEY)

    after = server.client.get_inference_statistics(MODEL, headers=KEY, as_json=True)

    [old], [new] = before["model_stats"], after["model_stats"]
    assert int(new["inference_count"]) - int(old.get("inference_count", 0)) == 2
    success = new["inference_stats"]["success"]
    assert int(success["count"]) - int(old["inference_stats"]["success"].get("count", 0)) == 1
    over_http = server.http_client.get_inference_statistics(MODEL, headers={"X-API-Key": "key"})
    assert as_message(over_http, service_pb2.ModelStatisticsResponse()) == as_message(
        after, service_pb2.ModelStatisticsResponse()
    )


def test_repository_index_load_and_unload_take_the_admin_key(server: Server) -> None:
    client = server.client
    index = client.get_model_repository_index(headers=ADMIN, as_json=True)["models"]

    assert [(m["version"], m["state"]) for m in index] == [("2", "UNAVAILABLE"), ("1", "READY")]
    assert index[0]["reason"].startswith("refused: ")
    assert status_of(client.get_model_repository_index)[0] == grpc.StatusCode.UNAUTHENTICATED
    code, message = status_of(lambda: client.unload_model(MODEL, headers=KEY))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "inference key" in message
    try:
        client.unload_model(MODEL, headers=ADMIN)
        assert not client.is_server_ready()
        code, _ = status_of(lambda: client.infer(MODEL, [tensor(pixels(1))], headers=KEY))
        assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        client.load_model(MODEL, headers=ADMIN)
    assert client.is_server_ready() and client.is_model_ready(MODEL, headers=KEY)


def test_the_inference_key_guards_the_models_api(server: Server) -> None:
    for call in (
        lambda: server.client.infer(MODEL, [tensor(pixels(1))]),
        lambda: server.client.get_model_metadata(MODEL, headers={"x-api-key": "wrong"}),
    ):
        assert status_of(call)[0] == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_answer_as_plain_ones(server: Server, algorithm: str) -> None:
    images = pixels(2, seed=5)
    plain = server.client.infer(MODEL, [tensor(images)], headers=KEY)

    compressed = server.client.infer(
        MODEL, [tensor(images)], headers=KEY, compression_algorithm=algorithm
    )

    np.testing.assert_array_equal(
        compressed.as_numpy("probabilities"), plain.as_numpy("probabilities")
    )


def test_a_compression_bomb_and_an_oversized_message_are_refused(server: Server) -> None:
    """4x the message limit in zeros, a kilobyte gzipped; and the same sent plain."""
    bomb = files([bytes(4 * MAX_UPLOAD_BYTES)])
    for algorithm in ("gzip", None):
        code, _ = status_of(
            lambda a=algorithm: server.client.infer(
                MODEL, [bomb], headers=KEY, compression_algorithm=a
            )
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert server.client.is_server_ready()  # and nothing else happened to it


@pytest.mark.parametrize(
    ("make", "code", "words"),
    [
        (lambda: tensor(pixels(0)), "INVALID_ARGUMENT", "a batch of 0 images"),
        (lambda: files([]), "INVALID_ARGUMENT", "a batch of 0 images"),
        (lambda: tensor(pixels(MAX_IMAGES + 1)), "RESOURCE_EXHAUSTED", "the limit is 4"),
        (lambda: files([b"x"] * (MAX_IMAGES + 1)), "RESOURCE_EXHAUSTED", "the limit is 4"),
        (lambda: tensor(pixels(1).reshape(1, 32, 96)), "INVALID_ARGUMENT", "the model takes"),
        (lambda: tensor(pixels(1).astype(np.float32), "FP32"), "INVALID_ARGUMENT", "UINT8"),
    ],
)
def test_edge_inputs_are_4xx_codes_that_name_the_problem(
    server: Server, make: Any, code: str, words: str
) -> None:
    got, message = status_of(lambda: server.client.infer(MODEL, [make()], headers=KEY))

    assert got == grpc.StatusCode[code] and words in message, message


def test_inputs_at_the_limit_are_answered(server: Server) -> None:
    uploads = [png_of(x) for x in pixels(MAX_IMAGES, seed=6)]

    as_tensor = server.client.infer(MODEL, [tensor(pixels(MAX_IMAGES, seed=6))], headers=KEY)
    as_files = server.client.infer(MODEL, [files(uploads)], headers=KEY)

    assert as_tensor.as_numpy("probabilities").shape == (MAX_IMAGES, len(LABELS))
    np.testing.assert_allclose(
        as_files.as_numpy("probabilities"), as_tensor.as_numpy("probabilities"), atol=1e-5
    )


def test_a_negative_size_and_a_raw_count_mismatch_are_invalid_arguments(server: Server) -> None:
    negative = service_pb2.ModelInferRequest(model_name=MODEL)
    negative.inputs.add(name="images", datatype="UINT8", shape=[-1, 32, 32, 3])
    negative.raw_input_contents.append(pixels(1).tobytes())
    extra = service_pb2.ModelInferRequest(model_name=MODEL)
    extra.inputs.add(name="images", datatype="UINT8", shape=[1, 32, 32, 3])
    extra.raw_input_contents.extend([pixels(1).tobytes()] * 2)

    for request, words in ((negative, "-1 is only for"), (extra, "2 raw_input_contents for 1")):
        with pytest.raises(grpc.RpcError) as refused:
            server.stub.ModelInfer(request, metadata=tuple(KEY.items()), timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in refused.value.details()


def test_unknown_models_versions_and_methods(server: Server) -> None:
    infer = server.client.infer
    assert status_of(lambda: infer("nope", [tensor(pixels(1))], headers=KEY))[0] == (
        grpc.StatusCode.NOT_FOUND
    )
    code, message = status_of(lambda: infer(MODEL, [tensor(pixels(1))], "7", headers=KEY))
    assert code == grpc.StatusCode.NOT_FOUND and "version 7 is not loaded" in message
    with pytest.raises(grpc.RpcError) as missing:
        server.stub.SystemSharedMemoryStatus(service_pb2.SystemSharedMemoryStatusRequest())
    assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_grpc_messages_share_the_in_flight_budget_with_http_bodies(server: Server) -> None:
    """An HTTP upload that declared the whole budget and stalled leaves no room for a gRPC
    message until it goes."""
    stalled = socket.create_connection(("127.0.0.1", int(server.http.rsplit(":", 1)[1])))
    try:
        stalled.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nX-API-Key: key\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            + f"Content-Length: {MAX_UPLOAD_BYTES}\r\n\r\n".encode()
        )
        time.sleep(0.5)  # the server reads the head and reserves the declared length
        code, message = status_of(
            lambda: server.client.infer(MODEL, [tensor(pixels(1))], headers=KEY)
        )
        assert code == grpc.StatusCode.UNAVAILABLE and "MAX_UPLOAD_BYTES_IN_FLIGHT" in message
    finally:
        stalled.close()
    deadline = time.monotonic() + 10
    while True:  # the budget comes back once the server sees the connection close
        try:
            server.client.infer(MODEL, [tensor(pixels(1))], headers=KEY)
            break
        except InferenceServerException:
            assert time.monotonic() < deadline, "the budget never came back"
            time.sleep(0.1)


def grpc_listeners(supervisor: subprocess.Popen, port: int) -> set[int]:
    """The supervisor's workers that hold a socket listening on `port` (from Linux's /proc)."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                listening.add(f"socket:[{fields[9]}]")
    task = Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children")
    workers = set()
    for pid in map(int, task.read_text().split()):
        with contextlib.suppress(OSError):  # a worker may end while we look
            if any(os.readlink(fd) in listening for fd in Path(f"/proc/{pid}/fd").iterdir()):
                workers.add(pid)
    return workers


def test_every_worker_serves_the_port_and_request_timeout_is_deadline_exceeded(
    model_dir: Path,
) -> None:
    """WORKERS=2: both bind GRPC_PORT (a second bind without SO_REUSEPORT would fail its
    start, and the supervisor's); REQUEST_TIMEOUT_S past is DEADLINE_EXCEEDED naming it."""
    grpc_port = free_port()
    settings = {"GRPC_PORT": str(grpc_port), "WORKERS": "2", "REQUEST_TIMEOUT_S": "0.000001"}
    supervisor, port = start_server(model_dir, **settings)
    try:
        wait_until_healthy(port, supervisor)
        deadline = time.monotonic() + 120
        while len(grpc_listeners(supervisor, grpc_port)) < 2:
            assert supervisor.poll() is None, f"the service ended: {supervisor.returncode}"
            assert time.monotonic() < deadline, "the second worker never served gRPC"
            time.sleep(0.2)
        for _ in range(20):  # new connections, spread over the processes by the kernel
            with triton.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
                assert client.is_server_live()
                code, message = status_of(lambda c=client: c.infer(MODEL, [tensor(pixels(1))]))
                assert code == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "REQUEST_TIMEOUT_S" in message
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    finally:
        supervisor.terminate()
        supervisor.wait(30)
    assert 'grpc_requests_total{code="OK",method="ServerLive"} 20.0' in metrics
    assert 'grpc_requests_total{code="DEADLINE_EXCEEDED",method="ModelInfer"} 20.0' in metrics


def test_sigterm_drains_grpc_with_http(model_dir: Path) -> None:
    """After SIGTERM, ServerReady says no at once while calls are still answered for
    DRAIN_DELAY_S; then the process ends cleanly (exit 0)."""
    grpc_port = free_port()
    process, port = start_server(model_dir, GRPC_PORT=str(grpc_port), DRAIN_DELAY_S="3")
    try:
        wait_until_healthy(port, process)
        with triton.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
            assert client.is_server_ready()
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 2
            while client.is_server_ready():
                assert time.monotonic() < deadline, "ServerReady still says ready"
                time.sleep(0.05)
            answer = client.infer(MODEL, [tensor(pixels(1))])
            assert answer.as_numpy("probabilities").shape == (1, len(LABELS))
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
