"""Prometheus metrics of one app instance; a registry per app, so tests can run many apps.

With WORKERS > 1 (app.supervisor) every process writes its values to files in
PROMETHEUS_MULTIPROC_DIR and a scrape, whichever process answers it, sums them all
(prometheus_client's multiprocess mode). That mode has no `Info` and no `Gauge.set_function`,
so the model is a gauge with value 1 and the queue gauge is set on every change.
"""

import os
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


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
