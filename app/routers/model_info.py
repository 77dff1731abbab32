"""The served model's metadata."""

from fastapi import APIRouter

from app.deps import ClassifierDep
from app.errors import error_responses
from app.schemas import ModelInfo

router = APIRouter(prefix="/model", tags=["model"])


@router.get("", response_model=ModelInfo, responses=error_responses("unauthorized", "not_ready"))
async def model_info(classifier: ClassifierDep) -> ModelInfo:
    """Labels, input shape, metrics and provenance of the model being served."""
    return ModelInfo.model_validate(classifier.metadata)
