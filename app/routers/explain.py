"""POST /explain: a prediction plus where the model looked (occlusion sensitivity) per image."""

import asyncio
import base64
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request

from app import occlusion, serving
from app.answering import AnsweringDep
from app.deps import (
    BatcherDep,
    ClassifierDep,
    DecodePoolDep,
    ExplainSlotsDep,
    SettingsDep,
    UploadsDep,
)
from app.errors import ApiError, error_responses
from app.routers.predict import PREDICT_ERRORS, UPLOADS_BODY
from app.schemas import ExplainResponse, Explanation
from app.settings import Settings

router = APIRouter(tags=["predict"])

DEFAULT_PATCH = 8
DEFAULT_STRIDE = 4
# 7 x 7 = 49 positions + the original: 50 model inputs per image, 5 images per request with
# the default MAX_BATCH_SIZE (256); stride 2 (169 positions) still fits one image in a batch.
DEFAULT_GRID = occlusion.Grid(size=32, patch=DEFAULT_PATCH, stride=DEFAULT_STRIDE)
_DEFAULT_BATCH = Settings.model_fields["max_batch_size"].default

DESCRIPTION = f"""
Classifies each image like **POST /predict** and measures where the answer comes from: a grey
square (`patch` x `patch` pixels of the 32x32 model input, grey level {occlusion.FILL}) slides
over the input by `stride` pixels, every occluded copy is classified together with the
original, and `sensitivity` holds, per position, how far the predicted label's probability fell.
No gradients are needed, so every backend answers it.

**Cost**: one image is {DEFAULT_GRID.inputs_per_image} model inputs with the default 8x8 square
and stride 4 ({DEFAULT_GRID.side} x {DEFAULT_GRID.side} positions + the original), about
{DEFAULT_GRID.inputs_per_image} times a /predict of the same image. All copies of a request go
through the batcher as **one batch** and count against `MAX_BATCH_SIZE` and `MAX_QUEUE_IMAGES`
like any other images: a request may hold at most `MAX_BATCH_SIZE // inputs per image` files
({_DEFAULT_BATCH // DEFAULT_GRID.inputs_per_image} with the defaults; more is a 413
`too_many_parts` naming the first file over), and a square and stride whose copies alone
exceed `MAX_BATCH_SIZE` are a 422. `(32 - patch)` must be a multiple of `stride` so the
positions cover the image evenly.

`input_png` is the 32x32 model input itself (PNG, lossless); `heatmap=true` adds
`heatmap_png`, the input upscaled 8x with the map drawn over it.
"""


@router.post(
    "/explain",
    response_model=ExplainResponse,
    responses=error_responses(*PREDICT_ERRORS),
    description=DESCRIPTION,
    openapi_extra=UPLOADS_BODY,
)
async def explain(
    request: Request,
    files: UploadsDep,
    classifier: ClassifierDep,
    batcher: BatcherDep,
    decode_pool: DecodePoolDep,
    slots: ExplainSlotsDep,
    settings: SettingsDep,
    answering: AnsweringDep,
    patch: Annotated[
        int, Query(ge=1, description="Side of the grey square, in model-input pixels.")
    ] = DEFAULT_PATCH,
    stride: Annotated[
        int, Query(ge=1, description="Step between square positions, in pixels (<= patch).")
    ] = DEFAULT_STRIDE,
    heatmap: Annotated[
        bool, Query(description="Also return the map drawn over the upscaled input as a PNG.")
    ] = False,
) -> ExplainResponse:
    """Classify images and map, per image, which region the answer depends on."""
    request.state.images = len(files)
    grid = _grid(classifier.height, patch, stride, settings.max_batch_size)
    names = serving.filenames(files)
    most = settings.max_batch_size // grid.inputs_per_image
    if len(files) > most:
        raise ApiError(
            413,
            "too_many_parts",
            f"{names[most] or 'file'}: /explain takes at most {most} images per request with "
            f"patch {patch} and stride {stride} ({grid.inputs_per_image} model inputs each, "
            f"MAX_BATCH_SIZE {settings.max_batch_size}); send the rest in another request",
            file=names[most],
        )
    async with slots.hold():
        images, probabilities = await serving.classify(
            serving.disconnected(request),
            batcher,
            serving.decode_all(files, names, classifier, settings.max_image_pixels, decode_pool),
            answering.deadline,
            settings.request_timeout_s,
            model_input=lambda decoded: occlusion.occluded_batch(decoded, grid),
            views_below=answering.views_below,
        )
    per_image = probabilities.reshape(len(images), grid.inputs_per_image, -1)
    maps = [occlusion.sensitivity(rows, int(np.argmax(rows[0])), grid) for rows in per_image]
    pictures = await asyncio.get_running_loop().run_in_executor(
        decode_pool.executor, _pictures, images, maps, grid, heatmap
    )
    return ExplainResponse(
        model=classifier.name,
        version=classifier.version,
        patch=grid.patch,
        stride=grid.stride,
        fill=occlusion.FILL,
        explanations=[
            Explanation(
                **dict(
                    serving.prediction(
                        name, rows[0], classifier.labels, answering.top_k, answering.uncertain_below
                    )
                ),
                input_png=input_png,
                sensitivity=np.round(position_map.astype(np.float64), 6).tolist(),
                heatmap_png=heatmap_png,
            )
            for name, rows, position_map, (input_png, heatmap_png) in zip(
                names, per_image, maps, pictures, strict=True
            )
        ],
    )


def _grid(size: int, patch: int, stride: int, max_batch_size: int) -> occlusion.Grid:
    """The square positions asked for, refused (422) if they do not tile the input or if one
    image's copies alone would not fit in a batch."""
    try:
        grid = occlusion.Grid(size=size, patch=patch, stride=stride)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    if grid.inputs_per_image > max_batch_size:
        raise ApiError(
            422,
            "invalid_request",
            f"patch {patch} with stride {stride} needs {grid.inputs_per_image} model inputs per "
            f"image, more than MAX_BATCH_SIZE ({max_batch_size}): use a larger patch or stride",
        )
    return grid


def _pictures(
    images: np.ndarray, maps: list[np.ndarray], grid: occlusion.Grid, heatmap: bool
) -> list[tuple[str, str | None]]:
    """PNG data URLs of each model input and, if asked, its heat map; run in the decode pool."""
    return [
        (
            _data_url(occlusion.png_bytes(image)),
            _data_url(occlusion.heatmap_png(image, position_map, grid)) if heatmap else None,
        )
        for image, position_map in zip(images, maps, strict=True)
    ]


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
