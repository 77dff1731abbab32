"""The Open Inference Protocol over gRPC: Triton's `inference.GRPCInferenceService` on
GRPC_PORT, so `tritonclient.grpc` and perf_analyzer -i grpc work.

It runs in the HTTP server's process and event loop (grpcio's asyncio server), and every RPC
calls what HTTP's /v2 calls (app.open_inference): the same version hold, checks, limits,
decoding, batcher and counters. Here is only what gRPC adds: protobuf in and out, the API keys
from the call's metadata (`x-api-key`), HTTP statuses as gRPC status codes, and limits of its
own kind: a message over MAX_UPLOAD_BYTES is refused by grpcio (RESOURCE_EXHAUSTED), calls
beyond MAX_CONNECTIONS at once too, and an infer message counts against
MAX_UPLOAD_BYTES_IN_FLIGHT with HTTP's bodies until it is answered. The messages are Triton's
own (grpc_service.proto, model_config.proto), as tritonclient publishes them.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.message import Message
from starlette.datastructures import State
from tritonclient.grpc import model_config_pb2, service_pb2

from app import inference_protocol as oip
from app import open_inference
from app.deps import holds_api_key, loaded_repository, require_admin_key, serving_ready
from app.errors import ApiError
from app.inference_protocol import InferenceRequest, ProtocolError
from app.limits import BudgetSpent
from app.repository import ModelRepository
from app.settings import Settings

logger = logging.getLogger("app.access")

SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# Who may call what, as on HTTP: health and server metadata are open, the models API takes
# the inference key (API_KEY, when set), the repository API the admin key. The rest of the
# service (streaming, shared memory, trace and log settings) answers UNIMPLEMENTED.
ACCESS = {
    "ServerLive": "open",
    "ServerReady": "open",
    "ServerMetadata": "open",
    "ModelReady": "inference",
    "ModelMetadata": "inference",
    "ModelConfig": "inference",
    "ModelInfer": "inference",
    "ModelStatistics": "inference",
    "RepositoryIndex": "admin",
    "RepositoryModelLoad": "admin",
    "RepositoryModelUnload": "admin",
}
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# The typed contents field that carries each datatype's values (InferTensorContents).
CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Message]]


async def start(state: State, settings: Settings) -> grpc.aio.Server:
    """Serve the protocol on HOST:GRPC_PORT until stopped; every WORKERS process binds it
    (grpcio sets SO_REUSEPORT) and the kernel spreads connections between them."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_upload_bytes),
            ("grpc.so_reuseport", 1),
        ],
        maximum_concurrent_rpcs=settings.max_connections,
    )
    server.add_generic_rpc_handlers((_handlers(InferenceService(state)),))
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    server.add_insecure_port(f"{host}:{settings.grpc_port}")  # raises when it cannot bind
    await server.start()
    return server


class InferenceService:
    """Each implemented RPC, answered from the app's state (set up by its lifespan)."""

    def __init__(self, state: State) -> None:
        self.state = state

    @property
    def settings(self) -> Settings:
        return self.state.settings

    @property
    def repository(self) -> ModelRepository:
        return self.state.repository

    def _serving(self) -> ModelRepository:
        """The repository, with a version to answer (503 otherwise, as HTTP's)."""
        return loaded_repository(self.state)

    async def ServerLive(self, request: Message, context: Any) -> Message:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Message, context: Any) -> Message:
        return service_pb2.ServerReadyResponse(ready=serving_ready(self.state))

    async def ServerMetadata(self, request: Message, context: Any) -> Message:
        return service_pb2.ServerMetadataResponse(**open_inference.server_metadata().model_dump())

    async def ModelReady(self, request: Message, context: Any) -> Message:
        """Ready when that version is loaded (default: any); not ready, not an error, else."""
        try:
            with open_inference.held(self._serving(), request.name, request.version):
                return service_pb2.ModelReadyResponse(ready=True)
        except ApiError as exc:
            if exc.status_code != 404:
                raise
            return service_pb2.ModelReadyResponse(ready=False)

    async def ModelMetadata(self, request: Message, context: Any) -> Message:
        repository = self._serving()
        with open_inference.held(repository, request.name, request.version) as served:
            described = open_inference.metadata(served.classifier, repository)
        return service_pb2.ModelMetadataResponse(**described.model_dump(exclude={"parameters"}))

    async def ModelConfig(self, request: Message, context: Any) -> Message:
        config = open_inference.config(
            self._serving(), self.settings, request.name, request.version
        )
        return service_pb2.ModelConfigResponse(
            config=json_format.ParseDict(config, model_config_pb2.ModelConfig())
        )

    async def ModelStatistics(self, request: Message, context: Any) -> Message:
        statistics = open_inference.statistics(
            self._serving(), self.state.metrics, request.name, request.version
        )
        return json_format.ParseDict(statistics, service_pb2.ModelStatisticsResponse())

    async def RepositoryIndex(self, request: Message, context: Any) -> Message:
        models = open_inference.index(self.repository, ready_only=request.ready)
        response = service_pb2.RepositoryIndexResponse()
        for model in models:
            response.models.add(**model)
        return response

    async def RepositoryModelLoad(self, request: Message, context: Any) -> Message:
        await open_inference.load(self.repository, request.model_name)
        return service_pb2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Message, context: Any) -> Message:
        await open_inference.unload(self.repository, request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()

    async def ModelInfer(self, request: Message, context: Any) -> Message:
        """HTTP's infer on a protobuf message; a deadline the client sets ends the call as
        grpcio cancels it, REQUEST_TIMEOUT_S as on HTTP (DEADLINE_EXCEEDED)."""
        settings = self.settings
        deadline = open_inference.now() + settings.request_timeout_s
        size = request.ByteSize()
        budget = self.state.upload_budget
        if not budget.take(size):
            spent = BudgetSpent(budget.limit)
            raise ApiError(503, "overloaded", spent.detail)
        try:
            with open_inference.protocol_errors():
                parsed, chunks = infer_request(request)
            answer = await open_inference.infer(
                parsed,
                chunks,
                name=request.model_name,
                version=request.model_version,
                repository=self._serving(),
                settings=settings,
                decode_pool=self.state.decode_pool,
                metrics=self.state.metrics,
                deadline=deadline,
                gone=None,  # a call the client cancels is cancelled here by grpcio
            )
        finally:
            budget.give(size)
        return infer_response(answer)


def infer_request(message: Message) -> tuple[InferenceRequest, list[bytes]]:
    """A ModelInferRequest as HTTP's parsed request: each input's values (typed contents) or
    bytes (raw_input_contents; BYTES contents as the length-prefixed elements HTTP sends)."""
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise ProtocolError(
            400,
            f"{len(raw)} raw_input_contents for {len(message.inputs)} inputs: send one per "
            "input, or none",
        )
    inputs, chunks = [], []
    for i, tensor in enumerate(message.inputs):
        typed = [field.name for field, _ in tensor.contents.ListFields()]
        data: list[Any] | None = None
        if raw:
            if typed:
                raise ProtocolError(
                    400, f"input '{tensor.name}' has both contents and raw_input_contents"
                )
            chunks.append(raw[i])
        else:
            field = CONTENTS.get(tensor.datatype, "")
            if typed and typed != [field]:
                raise ProtocolError(
                    400,
                    f"input '{tensor.name}' is {tensor.datatype}, whose values go in "
                    f"contents.{field or '(none)'}, not in contents.{typed[0]}",
                )
            values = getattr(tensor.contents, field, [])
            if tensor.datatype == "BYTES":
                chunks.append(oip.encode_bytes(list(values)))
            else:
                data = list(values)
                chunks.append(b"")
        inputs.append(
            {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": list(tensor.shape),
                "parameters": _parameters(tensor.parameters),
                "data": data,
            }
        )
    outputs = [
        {"name": output.name, "parameters": _parameters(output.parameters)}
        for output in message.outputs
    ]
    request = oip.validated_request(
        {
            "id": message.id or None,
            "parameters": _parameters(message.parameters),
            "inputs": inputs,
            "outputs": outputs or None,
        }
    )
    return request, chunks


def infer_response(answer: open_inference.Answer) -> Message:
    """The answer as a ModelInferResponse, every output as raw bytes (as Triton answers)."""
    response = answer.response
    message = service_pb2.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id or ""
    )
    for key, value in (response.parameters or {}).items():
        message.parameters[key].string_param = str(value)
    for output, value in oip.classified(answer.outputs, answer.probabilities, answer.labels):
        message.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        message.raw_output_contents.append(oip.raw_tensor(output.datatype, value))
    return message


def _parameters(parameters: Any) -> dict[str, Any]:
    """A map of InferParameter as the plain values HTTP's JSON parameters hold."""
    values = {}
    for key, parameter in parameters.items():
        which = parameter.WhichOneof("parameter_choice")
        values[key] = None if which is None else getattr(parameter, which)
    return values


def _handlers(service: InferenceService) -> grpc.GenericRpcHandler:
    """The implemented RPCs, each with its request and response messages from the service's
    descriptor, behind its key and its error mapping."""
    methods = {}
    for method in SERVICE.methods:
        if method.name not in ACCESS:
            continue
        methods[method.name] = grpc.unary_unary_rpc_method_handler(
            _guarded(service, method.name, getattr(service, method.name)),
            request_deserializer=message_factory.GetMessageClass(method.input_type).FromString,
            response_serializer=message_factory.GetMessageClass(
                method.output_type
            ).SerializeToString,
        )
    return grpc.method_handlers_generic_handler(SERVICE.full_name, methods)


def _guarded(service: InferenceService, name: str, handler: Handler) -> Handler:
    """The RPC behind its key, with errors as gRPC status codes, one access-log line and the
    gRPC metrics."""

    async def call(request: Message, context: grpc.aio.ServicerContext) -> Message:
        started = time.perf_counter()
        code, details = grpc.StatusCode.INTERNAL, "internal error"
        try:
            await _check_key(service.settings, ACCESS[name], context)
            response = await handler(request, context)
            code = grpc.StatusCode.OK
            return response
        except ApiError as exc:
            code, details = STATUS_CODES.get(exc.status_code, code), exc.message
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            logger.exception("gRPC %s failed", name)
        finally:
            _record(service.state, name, code, time.perf_counter() - started, request)
        await context.abort(code, details)

    return call


async def _check_key(settings: Settings, access: str, context: grpc.aio.ServicerContext) -> None:
    """HTTP's X-API-Key rules, the key from the call's metadata."""
    if access == "open":
        return
    key = dict(context.invocation_metadata() or ()).get("x-api-key")
    if isinstance(key, bytes):
        key = key.decode(errors="replace")
    if access == "admin":
        await require_admin_key(settings, key)
    elif not holds_api_key(settings, key):
        raise ApiError(401, "unauthorized", "missing or wrong x-api-key metadata")


def _record(
    state: State, method: str, code: grpc.StatusCode, seconds: float, request: Message
) -> None:
    state.metrics.grpc_requests.labels(method, code.name).inc()
    images = 0
    if method == "ModelInfer" and code == grpc.StatusCode.OK:
        shape = request.inputs[0].shape if request.inputs else []
        images = shape[0] if shape else 0
        state.metrics.images.inc(images)
    logger.info(
        "rpc",
        extra={
            "method": method,
            "status": code.name,
            "duration_ms": round(seconds * 1000, 2),
            "images": images,
        },
    )
