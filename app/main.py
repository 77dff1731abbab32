"""The ASGI app: `uvicorn app.main:app`. Creates the app, its lifespan, and includes the routers."""

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.batcher import Batcher
from app.errors import install_error_handlers
from app.model import ModelLoadError, configure_threads, load_classifier
from app.routers import health, model_info, predict
from app.settings import Settings, get_settings

logger = logging.getLogger("app")

DESCRIPTION = """
Classifies images into the ten CIFAR-10 classes with a Keras CNN served from a TensorFlow
SavedModel. Upload one or more images to **POST /predict** as `multipart/form-data` parts named
`files`; every image is resized to 32x32 and all images of a request are classified as one batch.

Errors are JSON: `{"error": {"code": "...", "message": "...", "file": "..."}}`.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load and warm the model before serving; on shutdown finish queued work, then stop."""
    settings: Settings = app.state.settings
    configure_threads(settings.tf_intra_op_threads, settings.tf_inter_op_threads)
    try:
        classifier = load_classifier(settings.model_dir)
        classifier.warm_up((1, settings.max_batch_size))
    except ModelLoadError as exc:
        logger.error("%s", exc)
        raise
    logger.info(
        "serving model %s version %d from %s (%d TF threads)",
        classifier.name,
        classifier.version,
        classifier.path,
        settings.tf_intra_op_threads,
    )
    batcher = Batcher(
        classifier.predict,
        max_batch_size=settings.max_batch_size,
        max_batch_delay_ms=settings.max_batch_delay_ms,
        max_queue_images=settings.max_queue_images,
    )
    decode_pool = ThreadPoolExecutor(settings.image_decode_threads, thread_name_prefix="decode")
    batcher.start()
    app.state.classifier = classifier
    app.state.batcher = batcher
    app.state.decode_pool = decode_pool
    app.state.ready = True
    try:
        yield
    finally:
        app.state.ready = False
        await batcher.stop()
        decode_pool.shutdown(wait=True)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logging.basicConfig(level=settings.log_level.upper())
    app = FastAPI(
        title="CIFAR-10 image classifier",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.ready = False
    install_error_handlers(app)
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    app.include_router(health.router)
    app.include_router(model_info.router)
    app.include_router(
        predict.router,
        max_body_size=settings.max_upload_bytes,
        form_limits={
            "max_files": settings.max_images_per_request,
            "max_fields": 16,
            "max_part_size": 64 * 1024,
        },
    )
    return app


app = create_app()
