"""The Open Inference Protocol (KServe V2) on the wire: its JSON shapes and tensor encodings.

Requests are JSON, or JSON followed by raw tensor bytes (the binary tensor data extension: the
`Inference-Header-Content-Length` header says where the JSON ends). Answers are built here
too: infer's outputs (with the classification extension), Triton's model configuration and its
statistics. Nothing here knows about HTTP or the batcher; a bad request raises `ProtocolError`
with the status the client should get.
https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from app.metrics import VersionStats
from app.version_policy import VersionPolicy

HEADER_LENGTH = "inference-header-content-length"
BINARY_CONTENT_TYPE = "application/octet-stream"

# The protocol's datatypes this service reads or writes, as NumPy dtypes.
DTYPES: dict[str, np.dtype] = {
    "UINT8": np.dtype(np.uint8),
    "FP32": np.dtype("<f4"),
}
# The protocol's datatypes as Triton's model configuration names them (model_config.proto).
TRITON_TYPES = {"UINT8": "TYPE_UINT8", "FP32": "TYPE_FP32", "BYTES": "TYPE_STRING"}


class ProtocolError(Exception):
    """A request the protocol cannot accept; answered as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(examples=["UINT8"])
    shape: list[int] = Field(examples=[[-1, 32, 32, 3]])


class ModelMetadata(BaseModel):
    name: str = Field(examples=["cifar10"])
    versions: list[str] = Field(examples=[["2", "1"]])
    platform: str = Field(examples=["tensorflow_savedmodel"])
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    # Not in the protocol's required fields (MLServer's schema has it): how this process serves.
    parameters: dict[str, str] = Field(
        default_factory=dict, examples=[{"backend": "openvino", "precision": "int8"}]
    )


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    """POST .../infer. `data` may be nested or flat, row-major; `binary_data_size` instead of
    `data` says the tensor's bytes follow the JSON."""

    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


def json_limit(max_images: int, height: int, width: int) -> int:
    """The most JSON a request can need: the largest UINT8 tensor the service takes, written
    as JSON numbers ("255, " per value), plus room for names and parameters. Image files come
    as binary data, which is not JSON."""
    return max_images * height * width * 3 * 5 + 64 * 1024


def parse_request(
    body: bytes, header_length: str | None, max_json_bytes: int
) -> tuple[InferenceRequest, list[bytes]]:
    """The JSON part and, for each input in order, its raw bytes (b"" for JSON data). A JSON
    part over `max_json_bytes` is refused before it is parsed: 33 MB of `[],` once took 1.2 GB
    and a 5 s stall."""
    if header_length is None:
        header, binary = body, b""
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise ProtocolError(400, "Inference-Header-Content-Length is not an integer") from None
        if not 0 < size <= len(body):
            raise ProtocolError(
                400,
                f"Inference-Header-Content-Length is {size}, the body has {len(body)} bytes",
            )
        header, binary = body[:size], body[size:]
    if len(header) > max_json_bytes:
        raise ProtocolError(
            413,
            f"the JSON part is {len(header)} bytes; no request needs more than {max_json_bytes} "
            "(send image files and large tensors as binary data)",
        )
    request = validated_request(header)
    chunks, offset = [], 0
    for tensor in request.inputs:
        size = tensor.parameters.get("binary_data_size")
        if size is None:
            chunks.append(b"")
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ProtocolError(
                400,
                f"input '{tensor.name}': binary_data_size must be a byte count, not {size!r}",
            )
        if offset + size > len(binary):
            raise ProtocolError(
                400, f"input '{tensor.name}': binary_data_size {size} overruns the body"
            )
        chunks.append(binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise ProtocolError(400, f"{len(binary) - offset} bytes after the last binary input")
    return request, chunks


def validated_request(request: bytes | dict[str, Any]) -> InferenceRequest:
    """A request's JSON (HTTP) or its fields (gRPC) as an InferenceRequest, checked as far as
    no model is needed: every shape gives every size."""
    try:
        if isinstance(request, bytes):
            parsed = InferenceRequest.model_validate_json(request)
        else:
            parsed = InferenceRequest.model_validate(request)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ProtocolError(400, f"invalid inference request: {where}: {first['msg']}") from None
    for tensor in parsed.inputs:
        if any(size < 0 for size in tensor.shape):
            raise ProtocolError(
                400,
                f"input '{tensor.name}' has shape {tensor.shape}: a request's shape gives every "
                "size (-1 is only for the model's metadata)",
            )
    return parsed


def decode_tensor(
    tensor: RequestInput, raw: bytes, datatype: str, shape: Sequence[int]
) -> np.ndarray:
    """A numeric input as an array of `shape` (-1: any size), checked against the data sent."""
    if tensor.datatype != datatype:
        raise ProtocolError(400, f"input '{tensor.name}' must be {datatype}, not {tensor.datatype}")
    dtype = DTYPES[datatype]
    _check_shape(tensor, shape)
    count = int(np.prod(tensor.shape))
    if tensor.data is None:
        if len(raw) != count * dtype.itemsize:
            raise ProtocolError(
                400,
                f"input '{tensor.name}': {len(raw)} bytes for shape {tensor.shape} "
                f"({count * dtype.itemsize} expected)",
            )
        return np.frombuffer(raw, dtype=dtype).reshape(tensor.shape)
    flat = _flatten(tensor.data)
    wrong = next((v for v in flat if isinstance(v, bool) or not isinstance(v, int | float)), None)
    if wrong is not None:
        raise ProtocolError(
            400,
            f"input '{tensor.name}': data is not a list of numbers: it holds {wrong!r} "
            f"({type(wrong).__name__})",
        )
    values = np.asarray(flat, dtype=np.float64)
    if values.size != count:
        raise ProtocolError(
            400, f"input '{tensor.name}': {values.size} values for shape {tensor.shape}"
        )
    info = np.iinfo(dtype) if dtype.kind == "u" else None
    if info is not None and (
        np.any(values != np.round(values)) or values.min() < info.min or values.max() > info.max
    ):
        raise ProtocolError(
            400, f"input '{tensor.name}': {tensor.datatype} values are integers 0..{info.max}"
        )
    return values.astype(dtype).reshape(tensor.shape)


def _flatten(data: list[Any]) -> list[Any]:
    """Nested JSON data as one row-major list (NumPy would read "7" and true as numbers)."""
    flat: list[Any] = []
    for item in data:
        if isinstance(item, list):
            flat.extend(_flatten(item))
        else:
            flat.append(item)
    return flat


def decode_bytes(tensor: RequestInput, raw: bytes) -> list[bytes]:
    """A BYTES input: each element is 4-byte little-endian length then the bytes."""
    if tensor.data is not None:
        raise ProtocolError(
            400,
            f"input '{tensor.name}': send BYTES (encoded image files) as binary data "
            "(binary_data_size), not as JSON strings",
        )
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(400, f"input '{tensor.name}': truncated BYTES element")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise ProtocolError(400, f"input '{tensor.name}': truncated BYTES element")
        items.append(raw[offset : offset + size])
        offset += size
    if len(items) != int(np.prod(tensor.shape)):
        raise ProtocolError(
            400, f"input '{tensor.name}': {len(items)} elements for shape {tensor.shape}"
        )
    return items


def encode_bytes(items: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def raw_tensor(datatype: str, value: np.ndarray | list[bytes]) -> bytes:
    """An output's bytes as both transports send them (HTTP's binary data, gRPC's raw
    contents): BYTES elements length-prefixed, numbers as the array's bytes."""
    return encode_bytes(value) if datatype == "BYTES" else value.tobytes()  # type: ignore[union-attr, arg-type]


def _check_shape(tensor: RequestInput, shape: Sequence[int]) -> None:
    expected = list(shape)
    ok = len(tensor.shape) == len(expected) and all(
        (want == -1 and got >= 1) or got == want
        for got, want in zip(tensor.shape, expected, strict=True)
    )
    if not ok:
        raise ProtocolError(
            400, f"input '{tensor.name}' has shape {tensor.shape}; the model takes {expected}"
        )


def encode_response(
    response: InferenceResponse, tensors: dict[str, tuple[np.ndarray | list[bytes], bool]]
) -> tuple[bytes, int | None]:
    """Fill the outputs' data (JSON) or append their bytes (binary); returns the body and, when
    anything is binary, the JSON header's length."""
    binary: list[bytes] = []
    for output in response.outputs:
        value, as_binary = tensors[output.name]
        if as_binary:
            raw = raw_tensor(output.datatype, value)
            output.parameters = {**(output.parameters or {}), "binary_data_size": len(raw)}
            binary.append(raw)
        elif output.datatype == "BYTES":
            output.data = [item.decode() for item in value]  # type: ignore[union-attr]
        else:
            output.data = value.reshape(-1).tolist()  # type: ignore[union-attr]
    header = response.model_dump_json(exclude_none=True).encode()
    if not binary:
        return header, None
    return header + b"".join(binary), len(header)


def wants_binary(request: InferenceRequest, output: RequestOutput | None) -> bool:
    if output is not None and "binary_data" in output.parameters:
        return bool(output.parameters["binary_data"])
    return bool(request.parameters.get("binary_data_output", False))


def requested_outputs(request: InferenceRequest, name: str, labels: int) -> list[RequestOutput]:
    """The outputs asked for (default: the one, `name`), each checked."""
    outputs = request.outputs or [RequestOutput(name=name)]
    if len(outputs) > 1 or outputs[0].name != name:
        names = [output.name for output in outputs]
        raise ProtocolError(400, f"outputs {names}: the model has one, '{name}'")
    count = outputs[0].parameters.get("classification", 0)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= labels:
        raise ProtocolError(400, f"classification must be an integer 0..{labels}")
    return outputs


def encode_classified(
    response: InferenceResponse,
    request: InferenceRequest,
    outputs: Sequence[RequestOutput],
    probabilities: np.ndarray,
    labels: Sequence[str],
) -> tuple[bytes, int | None]:
    """The infer answer's body (see `encode_response` and `classified`)."""
    tensors: dict[str, tuple[np.ndarray | list[bytes], bool]] = {}
    for requested, (output, value) in zip(
        outputs, classified(outputs, probabilities, labels), strict=True
    ):
        response.outputs.append(output)
        tensors[output.name] = (value, wants_binary(request, requested))
    return encode_response(response, tensors)


def classified(
    outputs: Sequence[RequestOutput], probabilities: np.ndarray, labels: Sequence[str]
) -> list[tuple[ResponseOutput, np.ndarray | list[bytes]]]:
    """Each output asked for, described and with its value: the probabilities, FP32
    [N, labels], or with the classification extension the k best of each image, BYTES [N, k]."""
    answers: list[tuple[ResponseOutput, np.ndarray | list[bytes]]] = []
    for requested in outputs:
        count = requested.parameters.get("classification")
        if count:
            value: np.ndarray | list[bytes] = classification(probabilities, labels, int(count))
            shape, datatype = [len(probabilities), int(count)], "BYTES"
        else:
            value = np.asarray(probabilities, DTYPES["FP32"])
            shape, datatype = list(probabilities.shape), "FP32"
        answers.append((ResponseOutput(name=requested.name, shape=shape, datatype=datatype), value))
    return answers


def classification(probabilities: np.ndarray, labels: Sequence[str], k: int) -> list[bytes]:
    """Triton's classification extension: per image the k best as "probability:index:label"."""
    best = np.argsort(-probabilities, axis=1)[:, :k]
    return [
        f"{row[i]:f}:{i}:{labels[i]}".encode()
        for row, indices in zip(probabilities, best, strict=True)
        for i in indices
    ]


def model_config(
    metadata: ModelMetadata,
    *,
    backend: str,
    max_batch_size: int,
    max_batch_delay_ms: float,
    policy: VersionPolicy,
) -> dict[str, Any]:
    """Triton's model configuration (model_config.proto, as its HTTP API writes it) of a model
    whose metadata is `metadata`: tensors without the batch dimension, which
    `max_batch_size` > 0 implies; what Triton's perf_analyzer and Model Analyzer start from."""

    def tensors(items: list[TensorMetadata]) -> list[dict[str, Any]]:
        return [
            {"name": t.name, "data_type": TRITON_TYPES[t.datatype], "dims": t.shape[1:]}
            for t in items
        ]

    return {
        "name": metadata.name,
        "platform": metadata.platform,
        "backend": backend,
        "version_policy": triton_version_policy(policy),
        "max_batch_size": max_batch_size,
        "input": tensors(metadata.inputs),
        "output": tensors(metadata.outputs),
        "dynamic_batching": {"max_queue_delay_microseconds": round(max_batch_delay_ms * 1000)},
    }


def triton_version_policy(policy: VersionPolicy) -> dict[str, Any]:
    """MODEL_VERSION_POLICY as model_config.proto's ModelVersionPolicy (TF Serving's and
    Triton's policies are the same three)."""
    if policy.specific is not None:
        return {"specific": {"versions": sorted(policy.specific)}}
    if policy.latest is None:
        return {"all": {}}
    return {"latest": {"num_versions": policy.latest}}


def model_statistics(name: str, version: str, stats: VersionStats) -> dict[str, Any]:
    """One version's entry of Triton's statistics extension (`model_stats`), durations as
    {count, ns}. Each phase counts the successful requests, as Triton's do (perf_analyzer
    refuses compute counts that differ); compute_infer's time is the model calls' (a batch
    counted once, however many requests it held). The time a request waits in the batcher's
    queue and the decoding before it are not timed apart: queue, compute_input and
    compute_output take 0 ns, their time is inside success."""

    def duration(count: int, seconds: float) -> dict[str, int]:
        return {"count": count, "ns": round(seconds * 1e9)}

    return {
        "name": name,
        "version": version,
        "last_inference": round(stats.last_inference_s * 1000),  # ms since the epoch
        "inference_count": stats.images,
        "execution_count": stats.executions[0],
        "inference_stats": {
            "success": duration(*stats.success),
            "fail": duration(*stats.fail),
            "queue": duration(stats.success[0], 0),
            "compute_input": duration(stats.success[0], 0),
            "compute_infer": duration(stats.success[0], stats.executions[1]),
            "compute_output": duration(stats.success[0], 0),
        },
        "batch_stats": [],
    }
