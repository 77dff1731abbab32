"""POST /predict: uploads -> preprocessing -> batcher -> model -> response schema."""

import asyncio

from fastapi import APIRouter, Request

from app import serving
from app.deps import (
    BatcherDep,
    ClassifierDep,
    DecodePoolDep,
    SettingsDep,
    UploadsDep,
)
from app.errors import error_responses
from app.schemas import PredictForm, PredictResponse

router = APIRouter(tags=["predict"])

PREDICT_ERRORS = (
    "empty_file",
    "corrupt_image",
    "invalid_multipart",
    "unauthorized",
    "upload_timeout",
    "body_too_large",
    "too_many_parts",
    "image_too_large",
    "unsupported_media_type",
    "unsupported_format",
    "invalid_request",
    "missing_files",
    "version_not_found",
    "not_ready",
    "overloaded",
    "shutting_down",
    "timeout",
)

# The multipart body is parsed by app.uploads as it streams; documented from its schema.
UPLOADS_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": PredictForm.model_json_schema()}},
    }
}


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=error_responses(*PREDICT_ERRORS),
    openapi_extra=UPLOADS_BODY,
)
async def predict(
    request: Request,
    files: UploadsDep,
    classifier: ClassifierDep,
    batcher: BatcherDep,
    decode_pool: DecodePoolDep,
    settings: SettingsDep,
    top_k: serving.TopK = None,
    uncertain_below: serving.UncertainBelow = None,
    views: serving.ViewsAsked = None,
) -> PredictResponse:
    """Classify uploaded images; all images of one request go through the model as one batch."""
    deadline = asyncio.get_running_loop().time() + settings.request_timeout_s
    request.state.images = len(files)
    k = serving.resolve_top_k(top_k, len(classifier.labels), settings.default_top_k)
    threshold = serving.resolve_uncertain_below(
        uncertain_below, settings.uncertain_below, classifier.uncertain_below
    )
    served_views = serving.resolve_views(views, settings.views, classifier)
    names = serving.filenames(files)
    decoding = serving.decode_all(files, names, classifier, settings.max_image_pixels, decode_pool)
    _, probabilities = await serving.classify(
        request,
        batcher,
        decoding,
        deadline,
        settings.request_timeout_s,
        views_below=served_views and classifier.views_below(served_views),
    )
    return PredictResponse(
        model=classifier.name,
        version=classifier.version,
        uncertain_below=threshold,
        views=served_views or "fixed",
        predictions=[
            serving.prediction(name, row, classifier.labels, k, threshold)
            for name, row in zip(names, probabilities, strict=True)
        ],
    )
