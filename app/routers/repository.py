"""The Open Inference Protocol's repository extension: index, load, unload; the admin key's.

Its own router so that its guard is its own: `require_admin_key` (ADMIN_API_KEY), never the
inference key, which may classify but not take the model away from everyone.
"""

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app import open_inference
from app.errors import ApiError
from app.repository import ModelRepository
from app.routers.v2 import ERRORS, ModelName

router = APIRouter(prefix="/v2/repository", tags=["open inference protocol"])


@router.post("/models/{name}/load", responses=ERRORS)
async def load_model(request: Request, name: ModelName) -> JSONResponse:
    """Look at the model folder now (as a poll does): load new versions, unload removed ones.
    For deployments with MODEL_POLL_S=0; needs ADMIN_API_KEY set, and that key."""
    await open_inference.load(request.app.state.repository, name)
    return JSONResponse({})


@router.post("/models/{name}/unload", responses=ERRORS)
async def unload_model(request: Request, name: ModelName) -> JSONResponse:
    """Stop serving every version (in-flight requests finish first); /health turns 503 until
    a load, or the next poll when MODEL_POLL_S > 0."""
    await open_inference.unload(request.app.state.repository, name)
    return JSONResponse({})


@router.post("/index", responses=ERRORS)
async def repository_index(request: Request) -> list[dict[str, Any]]:
    """Every version folder: READY, or UNAVAILABLE and why (`{"ready": true}`: ready ones)."""
    repository: ModelRepository = request.app.state.repository
    body = await request.body()
    try:
        ready_only = bool(body.strip()) and json.loads(body).get("ready") is True
    except (ValueError, AttributeError):
        raise ApiError(
            400, "invalid_request", 'the body is {"ready": true|false} or empty'
        ) from None
    return open_inference.index(repository, ready_only)
