"""The Open Inference Protocol (KServe V2) over HTTP, beside /predict: what Triton, KServe,
Seldon and OpenVINO Model Server speak, so `tritonclient` and the `kserve` SDK work unchanged.

What each operation does is app.open_inference's, shared with gRPC (app.grpc_service); here is
what HTTP adds: the routes, the body (JSON, or JSON then binary tensor data; gzip or deflate
both ways) and the protocol's `{"error": "..."}` (see app.errors). The JSON shapes live in
app.inference_protocol.
"""

import asyncio
import gzip
import zlib
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse

from app import inference_protocol as oip
from app import open_inference, serving
from app.deps import DecodePoolDep, RepositoryDep, SettingsDep, serving_ready
from app.errors import ApiError
from app.inference_protocol import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReadyResponse,
    ReadyResponse,
    ServerMetadata,
)
from app.limits import ENCODINGS, inflate

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
# Health and server metadata stay open when an API key guards the rest, as /health does.
health_router = APIRouter(prefix="/v2", tags=["open inference protocol"])

ModelName = Annotated[str, Path(description="The served model's name, e.g. `cifar10`.")]
Version = Annotated[str, Path(description="An integer version that is loaded.")]
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {
        "description": description,
        "content": {"application/json": {"example": {"error": example}}},
    }
    for status, description, example in (
        (400, "A malformed request, or a shape, datatype or value the model does not take.",
         "input 'images' has shape [1, 28, 28, 3]; the model takes [-1, 32, 32, 3]"),
        (401, "A key is set and the X-API-Key header is missing or wrong.",
         "missing or wrong X-API-Key header"),
        (403, "The repository API without ADMIN_API_KEY set, or with the inference key.",
         "set ADMIN_API_KEY to use the repository API"),
        (404, "No such model or version.", "version 7 is not loaded (loaded: [2])"),
        (413, "More images than MAX_IMAGES_PER_REQUEST, or a body over MAX_UPLOAD_BYTES "
         "(a compressed one: once inflated).",
         "65 images in one request; the limit is 64 (MAX_IMAGES_PER_REQUEST)"),
        (415, "A Content-Encoding other than gzip or deflate, or a BYTES element that is not "
         "an image.", "Content-Encoding 'br' is not accepted: send gzip, deflate or identity"),
        (503, "Not ready, draining, or the queue is full.", "too many images are waiting"),
    )
}  # fmt: skip


# The body is parsed by hand (it may end in raw bytes); its JSON part is documented from the
# pydantic model, whose nested models go into the document's components (see app.openapi).
_REQUEST = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
SCHEMAS = _REQUEST.pop("$defs") | {"InferenceRequest": _REQUEST}
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
            oip.BINARY_CONTENT_TYPE: {
                "schema": {"type": "string", "format": "binary"},
                "description": "The JSON part, then the tensors' bytes; the header "
                "Inference-Header-Content-Length says where the JSON ends.",
            },
        },
    }
}


@health_router.get("", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    return open_inference.server_metadata()


@health_router.get("/health/live", response_model=oip.LiveResponse)
async def server_live() -> oip.LiveResponse:
    return oip.LiveResponse(live=True)


@health_router.get(
    "/health/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}}
)
async def server_ready(request: Request) -> ReadyResponse | JSONResponse:
    """200 when a model version is loaded and the process is not draining; else 503."""
    if serving_ready(request.app.state):
        return ReadyResponse(ready=True)
    return JSONResponse({"ready": False}, status_code=503)


# Before /models/{name}: tritonclient asks /models/stats for every model (here: the one).
@router.get("/models/stats", responses=ERRORS)
@router.get("/models/{name}/stats", responses=ERRORS)
@router.get("/models/{name}/versions/{version}/stats", responses=ERRORS)
async def model_statistics(
    request: Request,
    repository: RepositoryDep,
    name: ModelName | None = None,
    version: Version | None = None,
) -> dict[str, Any]:
    """Triton's statistics extension: inference requests per loaded version (default: all)."""
    return open_inference.statistics(repository, request.app.state.metrics, name, version)


@router.get("/models/{name}", response_model=ModelMetadata, responses=ERRORS)
@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, responses=ERRORS)
async def model_metadata(
    repository: RepositoryDep, name: ModelName, version: Version | None = None
) -> ModelMetadata:
    with open_inference.held(repository, name, version) as served:
        return open_inference.metadata(served.classifier, repository)


@router.get("/models/{name}/ready", response_model=ModelReadyResponse, responses=ERRORS)
@router.get(
    "/models/{name}/versions/{version}/ready", response_model=ModelReadyResponse, responses=ERRORS
)
async def model_ready(
    repository: RepositoryDep, name: ModelName, version: Version | None = None
) -> ModelReadyResponse:
    """200 when that version is loaded (default: any); 404 when it is not."""
    with open_inference.held(repository, name, version):
        return ModelReadyResponse(name=name, ready=True)


@router.get("/models/{name}/config", responses=ERRORS)
@router.get("/models/{name}/versions/{version}/config", responses=ERRORS)
async def model_config(
    repository: RepositoryDep,
    settings: SettingsDep,
    name: ModelName,
    version: Version | None = None,
) -> dict[str, Any]:
    """Triton's model configuration, from the loaded version and the batching settings."""
    return open_inference.config(repository, settings, name, version)


@router.post(
    "/models/{name}/infer",
    response_model=InferenceResponse,
    responses=ERRORS,
    openapi_extra=INFER_BODY,
)
@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferenceResponse,
    responses=ERRORS,
    openapi_extra=INFER_BODY,
)
async def infer(
    request: Request,
    repository: RepositoryDep,
    name: ModelName,
    settings: SettingsDep,
    decode_pool: DecodePoolDep,
    version: Version | None = None,
) -> Response:
    """Classify a UINT8 tensor `images` [N, 32, 32, 3], or encoded image files as a BYTES
    tensor `images` [N] (binary data). JSON or the binary tensor data extension, both ways."""
    deadline = open_inference.now() + settings.request_timeout_s
    body = await _read_body(request, settings.max_upload_bytes)
    default = repository.get().classifier
    limit = oip.json_limit(settings.max_images_per_request, default.height, default.width)
    with open_inference.protocol_errors():
        # Off the event loop: a large JSON body takes its parser a while.
        parsed, chunks = await asyncio.get_running_loop().run_in_executor(
            decode_pool.executor,
            oip.parse_request,
            body,
            request.headers.get(oip.HEADER_LENGTH),
            limit,
        )
    answer = await open_inference.infer(
        parsed,
        chunks,
        name=name,
        version=version,
        repository=repository,
        settings=settings,
        decode_pool=decode_pool,
        metrics=request.app.state.metrics,
        deadline=deadline,
        gone=serving.disconnected(request),
    )
    request.state.images = len(answer.probabilities)
    body, header_length = oip.encode_classified(
        answer.response, parsed, answer.outputs, answer.probabilities, answer.labels
    )
    headers = (
        {} if header_length is None else {"Inference-Header-Content-Length": str(header_length)}
    )
    media_type = "application/json" if header_length is None else oip.BINARY_CONTENT_TYPE
    return _compressed(Response(body, media_type=media_type, headers=headers), request)


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The body, inflated when it is sent gzip or deflate (counted against MAX_UPLOAD_BYTES
    after inflating, see app.limits)."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity":
        return await request.body()
    if encoding not in ENCODINGS:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Encoding '{encoding}' is not accepted: send gzip, deflate or identity",
        )
    return await inflate(request.stream(), encoding, max_bytes)


def _compressed(response: Response, request: Request) -> Response:
    """The answer gzip- or deflate-compressed when the client accepts it (tritonclient's
    response_compression_algorithm). The whole body is compressed, so
    Inference-Header-Content-Length still counts the JSON before compression, as Triton's."""
    accepted = {
        token.split(";")[0].strip().lower()
        for token in request.headers.get("accept-encoding", "").split(",")
        if "q=0" not in token.replace(" ", "").split(";")[1:]
    }
    encoding = next((e for e in ("gzip", "deflate") if e in accepted), None)
    response.headers["Vary"] = "Accept-Encoding"
    if encoding is None:
        return response
    body = gzip.compress(response.body) if encoding == "gzip" else zlib.compress(response.body)
    response.body = body
    response.headers["Content-Encoding"] = encoding
    response.headers["Content-Length"] = str(len(body))
    return response
