"""The served model's metadata."""

import dataclasses

from fastapi import APIRouter

from app.deps import ClassifierDep, RepositoryDep
from app.errors import error_responses
from app.schemas import ModelInfo

router = APIRouter(prefix="/model", tags=["model"])


@router.get(
    "",
    response_model=ModelInfo,
    responses=error_responses("unauthorized", "version_not_found", "not_ready"),
)
async def model_info(classifier: ClassifierDep, repository: RepositoryDep) -> ModelInfo:
    """Labels, input shape, metrics and provenance of a served version (default: the highest)."""
    golden = classifier.golden
    runtime = {
        "backend": classifier.backend,
        "precision": classifier.precision,
        "precision_reason": classifier.precision_reason,
        "golden": None if golden is None else dataclasses.asdict(golden),
    }
    return ModelInfo.model_validate(
        classifier.metadata | {"loaded_versions": repository.versions, "runtime": runtime}
    )
