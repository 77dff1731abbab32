"""POST /predict: uploads -> preprocessing -> batcher -> model -> response schema."""

from fastapi import APIRouter, Request

from app import serving
from app.answering import AnsweringDep
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
    answering: AnsweringDep,
) -> PredictResponse:
    """Classify uploaded images; all images of one request go through the model as one batch."""
    request.state.images = len(files)
    names = serving.filenames(files)
    decoding = serving.decode_all(files, names, classifier, settings.max_image_pixels, decode_pool)
    _, probabilities = await serving.classify(
        serving.disconnected(request),
        batcher,
        decoding,
        answering.deadline,
        settings.request_timeout_s,
        views_below=answering.views_below,
    )
    return PredictResponse(
        model=classifier.name,
        version=classifier.version,
        uncertain_below=answering.uncertain_below,
        views=answering.views or "fixed",
        predictions=[
            serving.prediction(
                name, row, classifier.labels, answering.top_k, answering.uncertain_below
            )
            for name, row in zip(names, probabilities, strict=True)
        ],
    )
