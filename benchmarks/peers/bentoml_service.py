"""The same model and work served by BentoML, with its adaptive batching, configured for a CPU.

    bentoml serve benchmarks.peers.bentoml_service:Classifier --port 8104   (in the BentoML venv)

Configuration, and why:
- Batching, BentoML's own: `@bentoml.api(batchable=True, max_batch_size=256, ...)`. BentoML
  concatenates the requests' `files` lists into one list of at most 256 images (this service's
  MAX_BATCH_SIZE) and gives each request its slice of the answer back.
- BentoML has no batch window to set: its dispatcher learns the model's latency and chooses how
  long to wait. Its `max_latency_ms` is a budget past which queued requests are refused with 503,
  so it is set to the benchmark's 30 s client timeout (not 2 ms, which would refuse most
  requests under load).
- `@bentoml.service(workers=<CPUs>)`: one process per CPU (workers are how BentoML's docs have a
  Service use a multi-core CPU), each with CPUs // workers TensorFlow threads; BentoML's
  dispatcher runs one batch at a time per process. `traffic.timeout` 30 s, as the client's.
- `logging.access.enabled=False`: no line per request, as this service and LitServe at their
  warning log level.
- Uploads: `files: list[PIL.Image.Image]` is BentoML's multipart image input (Pillow opens each
  part); the API converts to RGB and squashes to 32x32 with a box filter
  (benchmarks/peers/common.py). The answer is the request's list of predictions.
"""

import os
from pathlib import Path

import bentoml
import numpy as np
from PIL.Image import Image

from benchmarks.peers import common

MAX_BATCH_SIZE = 256  # images per batch
MAX_LATENCY_MS = 30_000  # queued longer than this: 503; the benchmark's client timeout
WORKERS = common.cpus()  # serving processes


@bentoml.service(
    workers=WORKERS,
    traffic={"timeout": 30},
    logging={"access": {"enabled": False}},
)
class Classifier:
    def __init__(self) -> None:
        threads = max(1, common.cpus() // WORKERS)
        self.predict_images, self.labels = common.load_model(Path(os.environ["MODEL_DIR"]), threads)

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, files: list[Image]) -> list[dict]:
        pixels = np.stack([common.to_pixels(image) for image in files])
        return common.answers(self.predict_images(pixels), self.labels)
