"""The ASGI app: `uvicorn app.main:app`. Creates the app, its lifespan, and includes the routers."""

import asyncio
import functools
import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import grpc_service, openapi
from app.access import AccessMiddleware
from app.backends import resolve_backend
from app.batcher import Batcher, BatchStats
from app.deps import require_admin_key, require_api_key
from app.errors import install_error_handlers
from app.limits import InFlightBudget, RequestLimitsMiddleware
from app.logs import configure_logging
from app.metrics import Metrics
from app.model import (
    Classifier,
    ModelLoadError,
    configure_threads,
    describe_device,
    load_classifier,
)
from app.repository import ModelRepository, RepositoryEvent
from app.routers import (
    docs,
    explain,
    health,
    metrics,
    model_info,
    predict,
    v2,
    web,
)
from app.routers import repository as repository_api
from app.serving import DecodePool, Slots
from app.settings import Settings, get_settings

logger = logging.getLogger("app")

DESCRIPTION = """
Classifies images into the ten CIFAR-10 classes with a Keras CNN exported as a SavedModel and
run by OpenVINO on a CPU (TensorFlow where a GPU shows). Upload one or more images to
**POST /predict** as `multipart/form-data` parts named `files`; every image is resized to 32x32
and all images of a request are classified as one batch.

Errors are JSON: `{"error": {"code": "...", "message": "...", "file": "..."}}`.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load and warm the model versions before serving, watch the folder for new ones while
    serving; on shutdown finish queued work, then stop."""
    settings: Settings = app.state.settings
    telemetry: Metrics = app.state.metrics
    if resolve_backend(settings.inference_backend) == "tensorflow":  # else never imported
        configure_threads(settings.effective_intra_op_threads, settings.effective_inter_op_threads)
    repository = ModelRepository(
        settings.model_dir,
        policy=settings.version_policy,
        load=functools.partial(_load_version, settings),
        make_batcher=functools.partial(_make_batcher, settings, telemetry),
        on_event=lambda event: _record_event(telemetry, repository, event),
    )
    try:
        await repository.start()
    except ModelLoadError as exc:
        logger.error("%s", exc)
        raise
    default = repository.get().classifier
    logger.info(
        "serving model %s versions %s (default %d) from %s with %s %s on the %s "
        "(%d inference workers, policy %s)",
        default.name,
        repository.versions,
        default.version,
        settings.model_dir,
        default.backend,
        default.precision,
        describe_device() if default.backend == "tensorflow" else "CPU",
        settings.effective_inference_workers,
        settings.version_policy,
    )
    decode_pool = DecodePool(settings.effective_decode_threads, settings.full_size_decodes)
    app.state.repository = repository
    app.state.decode_pool = decode_pool
    app.state.explain_slots = Slots(
        settings.explain_concurrency, settings.explain_queue, "/explain"
    )
    rpc = await grpc_service.start(app.state, settings) if settings.grpc_port else None
    app.state.ready = True
    _drain_on_sigterm(app, settings.drain_delay_s, rpc, settings.graceful_shutdown_s)
    watcher = asyncio.create_task(_watch(repository, settings.model_poll_s), name="model-poll")
    try:
        yield
    finally:
        app.state.ready = False
        watcher.cancel()
        if rpc is not None:  # its calls finish within GRACEFUL_SHUTDOWN_S, as HTTP's
            await rpc.stop(settings.graceful_shutdown_s)
        await repository.close()
        decode_pool.shutdown()


def _load_version(settings: Settings, path: Path) -> Classifier:
    """Load, warm up and check one version; runs off the event loop."""
    classifier = load_classifier(
        path,
        settings.inference_backend,
        settings.inference_precision,
        threads=settings.effective_inference_threads,
    )
    classifier.warm_up((1, settings.max_batch_size))
    return classifier


def _make_batcher(settings: Settings, telemetry: Metrics, classifier: Classifier) -> Batcher:
    def record_batch(stats: BatchStats) -> None:
        telemetry.record_batch(classifier.version, stats.images, stats.seconds)

    return Batcher(
        classifier.predict,
        max_batch_size=settings.max_batch_size,
        max_batch_delay_ms=settings.max_batch_delay_ms,
        max_queue_images=settings.max_queue_images,
        workers=settings.effective_inference_workers,
        on_batch=record_batch,
        on_queue=telemetry.queue_images.inc,
    )


def _record_event(telemetry: Metrics, repository: ModelRepository, event: RepositoryEvent) -> None:
    telemetry.model_events.labels(event.kind).inc()
    if event.kind == "loaded":
        telemetry.model_versions.labels(str(event.version)).set(1)
    elif event.kind == "unloaded":
        telemetry.drop(telemetry.model_versions, str(event.version))
    if repository.versions:
        default = repository.get().classifier
        telemetry.show_model(default.name, str(default.version), default.backend, default.precision)


async def _watch(repository: ModelRepository, every_s: float) -> None:
    """Poll the model folder; a failing poll is logged and the next one tries again."""
    if every_s <= 0:
        return
    while True:
        await asyncio.sleep(every_s)
        try:
            await repository.poll()
        except Exception:
            logger.exception("polling the model folder %s failed", repository.path)


def _drain_on_sigterm(
    app: FastAPI, delay_s: float, rpc: grpc.aio.Server | None, grace_s: float
) -> None:
    """On SIGTERM turn /health (and gRPC's ServerReady) to not ready at once, then after
    `delay_s` stop taking requests: hand over to uvicorn's own shutdown (stop listening, let
    in-flight requests finish, run the lifespan exit) and stop gRPC's listener likewise."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread (not under TestClient)
    loop = asyncio.get_running_loop()
    server_handler = signal.getsignal(signal.SIGTERM)

    def stop_listening(signum: int, frame: object) -> None:
        if rpc is not None:
            app.state.grpc_stopping = loop.create_task(rpc.stop(grace_s))
        if callable(server_handler):
            server_handler(signum, frame)

    def drain(signum: int, frame: object) -> None:
        app.state.ready = False
        logger.info("SIGTERM received: draining", extra={"drain_delay_s": delay_s})
        loop.call_soon_threadsafe(loop.call_later, delay_s, stop_listening, signum, frame)

    signal.signal(signal.SIGTERM, drain)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    app = FastAPI(
        title="CIFAR-10 image classifier",
        version=openapi.package_version(),
        openapi_tags=openapi.TAGS,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by routers.docs from local assets
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.ready = False
    app.state.metrics = Metrics()
    app.state.upload_budget = InFlightBudget(settings.max_upload_bytes_in_flight)
    install_error_handlers(app)
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    app.add_middleware(
        RequestLimitsMiddleware,
        max_body_bytes=settings.max_upload_bytes,
        upload_timeout_s=settings.upload_timeout_s,
        budget=app.state.upload_budget,
    )
    app.add_middleware(AccessMiddleware, metrics=app.state.metrics)
    # Only with an API key configured do the routes (and their OpenAPI) require it.
    protected = [Depends(require_api_key)] if settings.api_key else []
    app.include_router(predict.router, dependencies=protected)
    app.include_router(explain.router, dependencies=protected)
    app.include_router(model_info.router, dependencies=protected)
    app.include_router(v2.router, dependencies=protected)
    app.include_router(v2.health_router)
    app.include_router(repository_api.router, dependencies=[Depends(require_admin_key)])
    app.include_router(health.router)
    details = [Depends(require_api_key)] if settings.api_key and settings.protect_details else []
    app.include_router(metrics.router, dependencies=details)
    app.mount("/static/swagger-ui", docs.static, name="swagger-ui")
    app.include_router(docs.router)
    app.mount("/static/web", web.static, name="web")
    app.include_router(web.router)
    openapi.install(app, schemas=v2.SCHEMAS)
    return app


app = create_app()
