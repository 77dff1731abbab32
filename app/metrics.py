"""Prometheus metrics of one app instance; a registry per app, so tests can run many apps.

With WORKERS > 1 (app.supervisor) every process writes its values to files in
PROMETHEUS_MULTIPROC_DIR and a scrape, whichever process answers it, sums them all
(prometheus_client's multiprocess mode). That mode has no `Info` and no `Gauge.set_function`,
so the model is a gauge with value 1 and the queue gauge is set on every change.
"""

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class VersionStats:
    """One model version's inference requests and model calls: (count, seconds) of requests
    by outcome and of model calls, images answered, and when the last request ended (Unix
    time; 0: never)."""

    success: tuple[int, float]
    fail: tuple[int, float]
    executions: tuple[int, float]
    images: int
    last_inference_s: float


@dataclass
class Tally:
    """What an inference request answered, filled in by the route as it goes."""

    images: int = 0


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "http_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "http_request_duration_seconds",
            "Time from request start to response end.",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.grpc_requests = Counter(
            "grpc_requests",
            "gRPC calls (the Open Inference Protocol on GRPC_PORT) by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.images = Counter("images_classified", "Images returned with a prediction.", registry=r)
        self.batch_images = Histogram(
            "inference_batch_size_images",
            "Images per model call.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "inference_duration_seconds",
            "Time of one model call.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_images = Gauge(
            "batch_queue_images",
            "Images waiting for the model.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.model = Gauge(
            "model_info",
            "1 for the default model version: the one /predict uses, and how it runs.",
            ["name", "version", "backend", "precision"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self._model_labels: tuple[str, ...] | None = None
        self.model_versions = Gauge(
            "model_version_loaded",
            "1 for each loaded model version.",
            ["version"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.model_events = Counter(
            "model_version_events",
            "Model versions loaded, refused (broken or contract-breaking) and unloaded.",
            ["event"],
            registry=r,
        )
        self._per_version(r)

    def _per_version(self, r: CollectorRegistry) -> None:
        """Per model version, for the statistics extension (GET /v2/models/NAME/stats) too."""
        self.version_requests = Histogram(
            "model_inference_request_duration_seconds",
            "Inference requests (/predict, /explain, /v2 infer) per model version and outcome "
            "(success: answered; fail: an error), from holding the version to the answer.",
            ["version", "outcome"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.version_executions = Histogram(
            "model_execution_duration_seconds",
            "Model calls (batches) per model version and their time: inference_duration_seconds "
            "by version.",
            ["version"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.version_images = Counter(
            "model_images_classified", "Images answered per model version.", ["version"], registry=r
        )
        self.version_last_inference = Gauge(
            "model_last_inference_timestamp_seconds",
            "When the last inference request on each model version ended (Unix time).",
            ["version"],
            multiprocess_mode="max",
            registry=r,
        )

    @contextmanager
    def inference(self, version: int) -> Iterator[Tally]:
        """Count one inference request on `version` (the statistics extension and /metrics):
        a success when the block returns, with the images it put in the tally; a failure when
        it raises."""
        tally, started, ok = Tally(), time.perf_counter(), False
        try:
            yield tally
            ok = True
        finally:
            self.record_inference(version, tally.images, time.perf_counter() - started, ok)

    def record_inference(self, version: int, images: int, seconds: float, ok: bool) -> None:
        """One inference request on `version` ended: answered (with `images`) or failed."""
        label = str(version)
        self.version_requests.labels(label, "success" if ok else "fail").observe(seconds)
        if ok:
            self.version_images.labels(label).inc(images)
        self.version_last_inference.labels(label).set(time.time())

    def record_batch(self, version: int, images: int, seconds: float) -> None:
        """One model call of `version`: the batch histograms, and the version's executions."""
        self.batch_images.observe(images)
        self.inference_seconds.observe(seconds)
        self.version_executions.labels(str(version)).observe(seconds)

    def version_stats(self, version: int) -> VersionStats:
        """What `record_inference` and `record_batch` counted for `version`: with WORKERS > 1,
        in every process, as /metrics sums them (a client such as perf_analyzer takes
        differences between two reads, which a per-process answer would make negative)."""
        label = str(version)
        registry = self.registry
        if multiprocess():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)

        def sample(name: str, **labels: str) -> float:
            return registry.get_sample_value(name, {"version": label, **labels}) or 0.0

        def duration(histogram: str, **labels: str) -> tuple[int, float]:
            return int(sample(f"{histogram}_count", **labels)), sample(f"{histogram}_sum", **labels)

        requests = "model_inference_request_duration_seconds"
        return VersionStats(
            success=duration(requests, outcome="success"),
            fail=duration(requests, outcome="fail"),
            executions=duration("model_execution_duration_seconds"),
            images=int(sample("model_images_classified_total")),
            last_inference_s=sample("model_last_inference_timestamp_seconds"),
        )

    def show_model(self, name: str, version: str, backend: str, precision: str) -> None:
        """model_info{name, version, backend, precision} 1 for the default version; the one it
        replaces goes."""
        labels = (name, version, backend, precision)
        if self._model_labels == labels:
            return
        if self._model_labels is not None:
            self.drop(self.model, *self._model_labels)
        self.model.labels(*labels).set(1)
        self._model_labels = labels

    def drop(self, gauge: Gauge, *labels: str) -> None:
        """Take a gauge's series away; the files of multiprocess mode cannot lose a series, so
        there it stays, at 0."""
        if multiprocess():
            gauge.labels(*labels).set(0)
        else:
            gauge.remove(*labels)


def multiprocess() -> bool:
    """Whether values live in PROMETHEUS_MULTIPROC_DIR (prometheus_client decides at import)."""
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ


def exposition(registry: CollectorRegistry) -> bytes:
    """The text format: this app's registry, or in multiprocess mode every process's values."""
    if not multiprocess():
        return generate_latest(registry)
    merged = CollectorRegistry()
    MultiProcessCollector(merged)
    return generate_latest(merged)
