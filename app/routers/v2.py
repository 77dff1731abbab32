"""The Open Inference Protocol (KServe V2) over HTTP, beside /predict: what Triton, KServe,
Seldon and OpenVINO Model Server speak, so `tritonclient` and the `kserve` SDK work unchanged.

Tensors go through the same batcher as /predict; encoded image files (a BYTES input) go through
the same decoding. Beside infer: Triton's model configuration and statistics extensions, and
gzip or deflate bodies both ways. The wire format and the answers' JSON live in
app.inference_protocol; errors are the protocol's `{"error": "..."}` (see app.errors).
"""

import asyncio
import gzip
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, get_args

import numpy as np
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse

from app import inference_protocol as oip
from app import openapi, serving
from app.contract import INPUT_NAME, OUTPUT_NAME, Views, is_version_name
from app.deps import DecodePoolDep, RepositoryDep, SettingsDep, counted, hold, serving_ready
from app.errors import ApiError
from app.inference_protocol import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReadyResponse,
    ProtocolError,
    ReadyResponse,
    ServerMetadata,
    TensorMetadata,
)
from app.limits import ENCODINGS, inflate
from app.metrics import Metrics
from app.model import Classifier
from app.repository import ModelRepository, ServedVersion
from app.settings import Settings
from app.uploads import Upload

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
# Health and server metadata stay open when an API key guards the rest, as /health does.
health_router = APIRouter(prefix="/v2", tags=["open inference protocol"])

INPUT = INPUT_NAME
OUTPUT = OUTPUT_NAME
EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "model_repository",
    "statistics",
]
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


@contextmanager
def _hold(repository: ModelRepository, name: str, version: str | None) -> Iterator[ServedVersion]:
    """The named version (default: the highest loaded) of the named model, held for this
    request by the one hold every route uses."""
    check_name(repository, name)
    if version is not None and not is_version_name(version):
        raise ApiError(404, "not_found", f"version '{version}' is not an integer")
    with hold(repository, None if version is None else int(version)) as served:
        yield served


@health_router.get("", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(
        name="cifar10-service", version=openapi.package_version(), extensions=EXTENSIONS
    )


@health_router.get("/health/live", response_model=oip.LiveResponse)
async def server_live() -> oip.LiveResponse:
    return oip.LiveResponse(live=True)


@health_router.get(
    "/health/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}}
)
async def server_ready(request: Request) -> ReadyResponse | JSONResponse:
    """200 when a model version is loaded and the process is not draining; else 503."""
    if serving_ready(request):
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
    name = name or str(repository.name)
    if version is None:
        check_name(repository, name)
        versions = repository.versions
    else:
        with _hold(repository, name, version) as served:
            versions = [served.version]
    metrics: Metrics = request.app.state.metrics
    return {
        "model_stats": [
            oip.model_statistics(name, str(v), metrics.version_stats(v)) for v in versions
        ]
    }


@router.get("/models/{name}", response_model=ModelMetadata, responses=ERRORS)
@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, responses=ERRORS)
async def model_metadata(
    repository: RepositoryDep, name: ModelName, version: Version | None = None
) -> ModelMetadata:
    with _hold(repository, name, version) as served:
        return _metadata(served.classifier, repository)


@router.get("/models/{name}/ready", response_model=ModelReadyResponse, responses=ERRORS)
@router.get(
    "/models/{name}/versions/{version}/ready", response_model=ModelReadyResponse, responses=ERRORS
)
async def model_ready(
    repository: RepositoryDep, name: ModelName, version: Version | None = None
) -> ModelReadyResponse:
    """200 when that version is loaded (default: any); 404 when it is not."""
    with _hold(repository, name, version):
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
    with _hold(repository, name, version) as served:
        metadata = _metadata(served.classifier, repository)
        return oip.model_config(
            metadata,
            backend=metadata.parameters["backend"],
            max_batch_size=settings.max_batch_size,
            max_batch_delay_ms=settings.max_batch_delay_ms,
            policy=settings.version_policy,
        )


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
    deadline = _now() + settings.request_timeout_s
    body = await _read_body(request, settings.max_upload_bytes)
    default = repository.get().classifier
    limit = oip.json_limit(settings.max_images_per_request, default.height, default.width)
    with _protocol_errors():
        # Off the event loop: a large JSON body takes its parser a while.
        parsed, chunks = await asyncio.get_running_loop().run_in_executor(
            decode_pool.executor,
            oip.parse_request,
            body,
            request.headers.get(oip.HEADER_LENGTH),
            limit,
        )
    with _hold(repository, name, version) as served, counted(request, served):
        classifier, batcher = served.classifier, served.batcher
        with _protocol_errors():
            outputs = oip.requested_outputs(parsed, OUTPUT, len(classifier.labels))
        views = serving.resolve_views(_requested_views(parsed), settings.views, classifier)
        images, probabilities = await serving.classify(
            request,
            batcher,
            _input_images(parsed, chunks, classifier, settings, decode_pool),
            deadline,
            settings.request_timeout_s,
            views_below=views and classifier.views_below(views),
        )
        request.state.images = len(images)
        response = InferenceResponse(
            model_name=classifier.name,
            model_version=str(classifier.version),
            id=parsed.id,
            parameters={"views": views or "fixed"},
            outputs=[],
        )
    body, header_length = oip.encode_classified(
        response, parsed, outputs, probabilities, classifier.labels
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


def check_name(repository: ModelRepository, name: str) -> None:
    if name != repository.name:
        raise ApiError(
            404, "not_found", f"unknown model '{name}'; this server has '{repository.name}'"
        )


def _now() -> float:
    return asyncio.get_running_loop().time()


@contextmanager
def _protocol_errors() -> Iterator[None]:
    try:
        yield
    except ProtocolError as exc:
        raise ApiError(exc.status, "invalid_inference_request", exc.message) from None


def _requested_views(request: InferenceRequest) -> Views | None:
    """The request parameter `views` (as /predict's ?views=), checked."""
    views = request.parameters.get("views")
    if views is not None and views not in get_args(Views):
        raise ApiError(
            400,
            "invalid_inference_request",
            f"parameter views is {views!r}; it takes one of {', '.join(get_args(Views))}",
        )
    return views


async def _input_images(
    request: InferenceRequest,
    chunks: list[bytes],
    classifier: Classifier,
    settings: Settings,
    decode_pool: serving.DecodePool,
) -> np.ndarray:
    """The one input as model-ready uint8 images: a UINT8 tensor as sent, or BYTES decoded."""
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT:
        names = [tensor.name for tensor in request.inputs]
        raise ApiError(
            400, "invalid_inference_request", f"inputs {names}: the model takes one, '{INPUT}'"
        )
    tensor, raw = request.inputs[0], chunks[0]
    limit = settings.max_images_per_request
    count = tensor.shape[0] if tensor.shape else 0
    if tensor.shape and count == 0:
        raise ApiError(
            400,
            "invalid_inference_request",
            f"input '{INPUT}' has shape {tensor.shape}: a batch of 0 images; send at least one",
        )
    if count > limit:
        raise ApiError(
            413,
            "too_many_parts",
            f"{count} images in one request; the limit is {limit} (MAX_IMAGES_PER_REQUEST)",
        )
    with _protocol_errors():
        if tensor.datatype != "BYTES":
            return oip.decode_tensor(
                tensor, raw, "UINT8", [-1, classifier.height, classifier.width, 3]
            )
        if len(tensor.shape) not in (1, 2) or tensor.shape[1:] not in ([], [1]):
            raise ProtocolError(400, f"input '{INPUT}' BYTES has shape {tensor.shape}, not [N]")
        files = oip.decode_bytes(tensor, raw)
    uploads = [Upload(filename=f"{INPUT}[{i}]", data=data) for i, data in enumerate(files)]
    names = serving.filenames(uploads)
    return await serving.decode_all(
        uploads, names, classifier, settings.max_image_pixels, decode_pool
    )


def _metadata(classifier: Classifier, repository: ModelRepository) -> ModelMetadata:
    backend = getattr(classifier, "backend", "tensorflow")
    return ModelMetadata(
        name=classifier.name,
        versions=[str(v) for v in repository.versions],
        platform="tensorflow_savedmodel" if backend == "tensorflow" else f"{backend}_savedmodel",
        inputs=[
            TensorMetadata(
                name=INPUT, datatype="UINT8", shape=[-1, classifier.height, classifier.width, 3]
            )
        ],
        outputs=[TensorMetadata(name=OUTPUT, datatype="FP32", shape=[-1, len(classifier.labels)])],
        parameters={"backend": backend, "precision": classifier.precision},
    )
