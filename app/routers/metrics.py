"""Prometheus scrape endpoint."""

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.metrics import exposition

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Request, batch, queue and inference metrics in the Prometheus text format."""
    return Response(exposition(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
