"""The Open Inference Protocol's operations, whichever transport carries them: HTTP
(app.routers.v2, app.routers.repository) and gRPC (app.grpc_service) both call these, so a
request is checked, held, batched, counted and answered the same way on either.

Errors are `ApiError`s with the HTTP status; gRPC maps each status to its own code. The JSON
shapes and tensor encodings live in app.inference_protocol.
"""

import asyncio
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np

from app import inference_protocol as oip
from app import openapi, serving
from app.contract import INPUT_NAME, OUTPUT_NAME, Views, is_version_name
from app.deps import hold
from app.errors import ApiError
from app.inference_protocol import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ProtocolError,
    RequestOutput,
    ServerMetadata,
    TensorMetadata,
)
from app.metrics import Metrics
from app.model import Classifier
from app.repository import ModelRepository, ServedVersion
from app.settings import Settings
from app.uploads import Upload

EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "model_repository",
    "statistics",
]


@dataclass
class Answer:
    """An infer request's answer before its wire format: the response without its outputs,
    the outputs asked for, and the probabilities they come from."""

    response: InferenceResponse
    outputs: list[RequestOutput]
    probabilities: np.ndarray
    labels: Sequence[str]


def server_metadata() -> ServerMetadata:
    return ServerMetadata(
        name="cifar10-service", version=openapi.package_version(), extensions=EXTENSIONS
    )


def check_name(repository: ModelRepository, name: str) -> None:
    if name != repository.name:
        raise ApiError(
            404, "not_found", f"unknown model '{name}'; this server has '{repository.name}'"
        )


@contextmanager
def held(repository: ModelRepository, name: str, version: str | None) -> Iterator[ServedVersion]:
    """The named version (None or "": the highest loaded) of the named model, held for this
    request by the one hold every route uses."""
    check_name(repository, name)
    if version and not is_version_name(version):
        raise ApiError(404, "not_found", f"version '{version}' is not an integer")
    with hold(repository, int(version) if version else None) as served:
        yield served


def metadata(classifier: Classifier, repository: ModelRepository) -> ModelMetadata:
    backend = getattr(classifier, "backend", "tensorflow")
    return ModelMetadata(
        name=classifier.name,
        versions=[str(v) for v in repository.versions],
        platform="tensorflow_savedmodel" if backend == "tensorflow" else f"{backend}_savedmodel",
        inputs=[
            TensorMetadata(
                name=INPUT_NAME,
                datatype="UINT8",
                shape=[-1, classifier.height, classifier.width, 3],
            )
        ],
        outputs=[
            TensorMetadata(name=OUTPUT_NAME, datatype="FP32", shape=[-1, len(classifier.labels)])
        ],
        parameters={"backend": backend, "precision": classifier.precision},
    )


def config(
    repository: ModelRepository, settings: Settings, name: str, version: str | None
) -> dict[str, Any]:
    """Triton's model configuration, from the loaded version and the batching settings."""
    with held(repository, name, version) as served:
        described = metadata(served.classifier, repository)
    return oip.model_config(
        described,
        backend=described.parameters["backend"],
        max_batch_size=settings.max_batch_size,
        max_batch_delay_ms=settings.max_batch_delay_ms,
        policy=settings.version_policy,
    )


def statistics(
    repository: ModelRepository, metrics: Metrics, name: str | None, version: str | None
) -> dict[str, Any]:
    """Triton's statistics extension: inference requests per loaded version (default: all;
    no name: every model, which here is the one)."""
    name = name or repository.name
    if version:
        with held(repository, name, version) as served:
            versions = [served.version]
    else:
        check_name(repository, name)
        versions = repository.versions
    return {
        "model_stats": [
            oip.model_statistics(name, str(v), metrics.version_stats(v)) for v in versions
        ]
    }


def index(repository: ModelRepository, ready_only: bool) -> list[dict[str, Any]]:
    """Every version folder: READY, or UNAVAILABLE and why."""
    return [
        {"name": repository.name, "version": v.version, "state": v.state, "reason": v.reason}
        for v in repository.index()
        if v.state == "READY" or not ready_only
    ]


async def load(repository: ModelRepository, name: str) -> None:
    """Look at the model folder now (as a poll does): load new versions, unload removed ones."""
    check_name(repository, name)
    await repository.poll()
    if not repository.versions:
        raise ApiError(503, "not_ready", f"no version of '{name}' could be loaded")


async def unload(repository: ModelRepository, name: str) -> None:
    """Stop serving every version; in-flight requests finish first."""
    check_name(repository, name)
    await repository.unload()


async def infer(
    request: InferenceRequest,
    chunks: list[bytes],
    *,
    name: str,
    version: str | None,
    repository: ModelRepository,
    settings: Settings,
    decode_pool: serving.DecodePool,
    metrics: Metrics,
    deadline: float,
    gone: Coroutine[Any, Any, None] | None,
) -> Answer:
    """Classify a UINT8 tensor `images` [N, 32, 32, 3] (its bytes or its values), or encoded
    image files as a BYTES tensor `images` [N], through the version's batcher (serving)."""
    with held(repository, name, version) as served, metrics.inference(served.version) as tally:
        classifier = served.classifier
        with protocol_errors():
            outputs = oip.requested_outputs(request, OUTPUT_NAME, len(classifier.labels))
        views = serving.resolve_views(_requested_views(request), settings.views, classifier)
        images, probabilities = await serving.classify(
            gone,
            served.batcher,
            _input_images(request, chunks, classifier, settings, decode_pool),
            deadline,
            settings.request_timeout_s,
            views_below=views and classifier.views_below(views),
        )
        tally.images = len(images)
    response = InferenceResponse(
        model_name=classifier.name,
        model_version=str(classifier.version),
        id=request.id,
        parameters={"views": views or "fixed"},
        outputs=[],
    )
    return Answer(response, outputs, probabilities, classifier.labels)


def now() -> float:
    """The clock deadlines are on (serving.classify's)."""
    return asyncio.get_running_loop().time()


@contextmanager
def protocol_errors() -> Iterator[None]:
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
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
        names = [tensor.name for tensor in request.inputs]
        raise ApiError(
            400, "invalid_inference_request", f"inputs {names}: the model takes one, '{INPUT_NAME}'"
        )
    tensor, raw = request.inputs[0], chunks[0]
    limit = settings.max_images_per_request
    count = tensor.shape[0] if tensor.shape else 0
    if tensor.shape and count == 0:
        raise ApiError(
            400,
            "invalid_inference_request",
            f"input '{INPUT_NAME}' has shape {tensor.shape}: a batch of 0 images; send at least "
            "one",
        )
    if count > limit:
        raise ApiError(
            413,
            "too_many_parts",
            f"{count} images in one request; the limit is {limit} (MAX_IMAGES_PER_REQUEST)",
        )
    with protocol_errors():
        if tensor.datatype != "BYTES":
            return oip.decode_tensor(
                tensor, raw, "UINT8", [-1, classifier.height, classifier.width, 3]
            )
        if len(tensor.shape) not in (1, 2) or tensor.shape[1:] not in ([], [1]):
            raise ProtocolError(
                400, f"input '{INPUT_NAME}' BYTES has shape {tensor.shape}, not [N]"
            )
        files = oip.decode_bytes(tensor, raw)
    uploads = [Upload(filename=f"{INPUT_NAME}[{i}]", data=data) for i, data in enumerate(files)]
    names = serving.filenames(uploads)
    return await serving.decode_all(
        uploads, names, classifier, settings.max_image_pixels, decode_pool
    )
