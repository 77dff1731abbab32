"""Prometheus metrics of one app instance; a registry per app, so tests can run many apps."""

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

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
        self.queue_images = Gauge("batch_queue_images", "Images waiting for the model.", registry=r)
        self.model = Info("model", "The served model.", registry=r)
