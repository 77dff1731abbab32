"""Liveness and readiness, for load balancers and orchestrators."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.deps import SettingsDep, holds_api_key, serving_ready
from app.errors import error_response, error_responses
from app.schemas import HealthResponse, LiveResponse

router = APIRouter(prefix="/health", tags=["health"])


@router.get(
    "",
    response_model=HealthResponse,
    response_model_exclude_none=True,
    responses=error_responses("not_ready"),
)
async def ready(request: Request, settings: SettingsDep) -> HealthResponse | JSONResponse:
    """200 once the model is loaded and warmed up and the process is not draining; else 503."""
    if not serving_ready(request.app.state):
        return error_response(503, "not_ready", "the model is loading or the service is draining")
    # The key read here, not declared: /health is public, and its OpenAPI says so.
    if settings.protect_details and not holds_api_key(settings, request.headers.get("X-API-Key")):
        return HealthResponse(status="ok")
    repository = request.app.state.repository
    classifier = repository.get().classifier
    return HealthResponse(
        status="ok",
        model=classifier.name,
        version=classifier.version,
        versions=repository.versions,
        backend=classifier.backend,
        precision=classifier.precision,
        labels=classifier.labels,
    )


@router.get("/live", response_model=LiveResponse)
async def live() -> LiveResponse:
    """200 while the process runs."""
    return LiveResponse(status="alive")
