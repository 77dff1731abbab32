"""Shared dependencies: what a route needs, taken from the app's state set up in the lifespan.

All are `async def` although none awaits: FastAPI runs a plain `def` dependency in its thread
pool, a thread hop per dependency per request that cost ~15 % of throughput under load.
"""

import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Query, Request, Security
from fastapi.security import APIKeyHeader
from pydantic import SecretStr
from starlette.datastructures import State

from app.batcher import Batcher
from app.errors import ApiError
from app.metrics import Metrics
from app.model import Classifier
from app.repository import ModelRepository, ServedVersion, VersionNotFound
from app.serving import DecodePool, Slots
from app.settings import Settings
from app.uploads import Upload, read_uploads


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def serving_ready(state: State) -> bool:
    """A version is loaded and the process is not draining: what the readiness probes say
    (HTTP's and gRPC's; `state` is the app's)."""
    repository: ModelRepository | None = getattr(state, "repository", None)
    return getattr(state, "ready", False) and bool(repository and repository.versions)


def loaded_repository(state: State) -> ModelRepository:
    """The app's repository with a version to answer from, else 503 (HTTP and gRPC)."""
    repository: ModelRepository | None = getattr(state, "repository", None)
    if repository is None or not repository.versions:
        raise ApiError(503, "not_ready", "the model is not loaded yet")
    return repository


async def get_repository(request: Request) -> ModelRepository:
    return loaded_repository(request.app.state)


RepositoryDep = Annotated[ModelRepository, Depends(get_repository)]


@contextmanager
def hold(repository: ModelRepository, version: int | None = None) -> Iterator[ServedVersion]:
    """The version that answers a request (default: the highest loaded), held until the
    request is done: a poll or an unload does not take it away mid-request. The one hold of
    every route, /predict's, /explain's and /v2's."""
    try:
        served = repository.acquire(version)
    except VersionNotFound as exc:
        raise ApiError(404, "version_not_found", str(exc)) from None
    try:
        yield served
    finally:
        repository.release(served)


async def get_served(
    repository: RepositoryDep,
    version: Annotated[
        int | None,
        Query(description="A loaded model version; default: the highest loaded.", ge=1),
    ] = None,
) -> AsyncIterator[ServedVersion]:
    """The model version that answers this request, held until the response is done."""
    with hold(repository, version) as served:
        yield served


ServedDep = Annotated[ServedVersion, Depends(get_served)]


async def get_classifier(served: ServedDep) -> Classifier:
    return served.classifier


@contextmanager
def counted(request: Request, served: ServedVersion) -> Iterator[None]:
    """Count one inference request on its version (Metrics.inference); the images answered
    are the route's `request.state.images`."""
    metrics: Metrics = request.app.state.metrics
    with metrics.inference(served.version) as tally:
        try:
            yield
        finally:
            tally.images = getattr(request.state, "images", 0)


async def get_batcher(request: Request, served: ServedDep) -> AsyncIterator[Batcher]:
    """The held version's batcher; the routes that take it infer, so each is counted."""
    with counted(request, served):
        yield served.batcher


async def get_decode_pool(request: Request) -> DecodePool:
    return request.app.state.decode_pool


async def get_explain_slots(request: Request) -> Slots:
    return request.app.state.explain_slots


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
ClassifierDep = Annotated[Classifier, Depends(get_classifier)]
BatcherDep = Annotated[Batcher, Depends(get_batcher)]
DecodePoolDep = Annotated[DecodePool, Depends(get_decode_pool)]
ExplainSlotsDep = Annotated[Slots, Depends(get_explain_slots)]

_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="Needed only when the API_KEY setting is set."
)


def _matches(key: str | None, secret: SecretStr | None) -> bool:
    """The header holds this configured key (compared in constant time)."""
    if key is None or secret is None:
        return False
    return secrets.compare_digest(key.encode(), secret.get_secret_value().encode())


def holds_api_key(settings: Settings, key: str | None) -> bool:
    """Whether the request may use what API_KEY guards: always when no key is set."""
    return settings.api_key is None or _matches(key, settings.api_key)


ApiKey = Annotated[str | None, Security(_api_key_header)]


async def require_api_key(settings: SettingsDep, key: ApiKey) -> None:
    """Optional shared-secret auth for deployments without a gateway in front."""
    if not holds_api_key(settings, key):
        raise ApiError(401, "unauthorized", "missing or wrong X-API-Key header")


async def require_admin_key(settings: SettingsDep, key: ApiKey) -> None:
    """The repository API's key, apart from the inference key: a client that may classify may
    not unload the model for everyone."""
    if settings.admin_api_key is None:
        raise ApiError(403, "forbidden", "set ADMIN_API_KEY to use the repository API")
    if key is None:
        raise ApiError(401, "unauthorized", "missing X-API-Key header")
    if _matches(key, settings.admin_api_key):
        return
    if _matches(key, settings.api_key):
        raise ApiError(403, "forbidden", "the inference key does not open the repository API")
    raise ApiError(401, "unauthorized", "wrong X-API-Key header")


async def get_uploads(request: Request, settings: SettingsDep) -> list[Upload]:
    """The uploaded files, read from the body as it streams in (size and time capped upstream)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send multipart/form-data with 'files' parts, not '{content_type or 'no body'}'",
        )
    return await read_uploads(
        content_type, request.stream(), max_files=settings.max_images_per_request
    )


UploadsDep = Annotated[list[Upload], Depends(get_uploads)]
