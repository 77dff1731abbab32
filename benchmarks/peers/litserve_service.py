"""The same model and work served by LitServe, configured as its docs advise for a CPU server.

    python -m benchmarks.peers.litserve_service     (in the LitServe venv; MODEL_DIR, PORT)

Configuration, and why:
- Batching, LitServe's own: `LitAPI(max_batch_size=256, batch_timeout=0.002)`, the numbers this
  service starts with (MAX_BATCH_SIZE 256, MAX_BATCH_DELAY_MS 2). LitServe counts requests, not
  images, in a batch, so `predict` calls the signature in chunks of at most 256 images.
- `LitServer(accelerator="cpu", workers_per_device=<CPUs>)`: LitServe's docs say to set the
  workers to the CPU count on a CPU; each worker is a process with 1 TensorFlow thread per CPU
  it gets (CPUs // workers), so the workers do not fight over cores.
- `fast_queue=True`: LitServe's ZeroMQ transport, which its docs advise above 100 requests/s.
- `server.run(num_api_servers=None)`: LitServe's default, as many HTTP processes as workers.
- `timeout=30`: LitServe's default request timeout, the benchmark's client timeout too.
- Uploads: the multipart `files` parts are read the way LitServe documents for forms: with
  `decode_request(request: Request)` LitServe awaits `request.form()` in its HTTP process and hands
  the form to the worker, which reads each `UploadFile` and decodes it with Pillow
  (benchmarks/peers/common.py: RGB, box filter, squash to 32x32).
"""

import os
from pathlib import Path

import litserve as ls
import numpy as np
from fastapi import Request

from benchmarks.peers import common

MAX_BATCH_SIZE = 256  # requests per batch
BATCH_TIMEOUT_S = 0.002  # wait for more requests after the first, in seconds
WORKERS = common.cpus()  # inference processes


class Classifier(ls.LitAPI):
    def setup(self, device: str) -> None:
        threads = max(1, common.cpus() // WORKERS)
        self.predict_images, self.labels = common.load_model(Path(os.environ["MODEL_DIR"]), threads)

    def decode_request(self, request: Request) -> np.ndarray:
        # LitServe passes the awaited form: one UploadFile per `files` part.
        return np.stack([common.to_pixels(part.file.read()) for part in request.getlist("files")])

    def batch(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return inputs  # requests carry 1 to 16 images: `predict` concatenates them

    def predict(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        probabilities = self.predict_images(np.concatenate(inputs))
        return np.split(probabilities, np.cumsum([len(images) for images in inputs])[:-1])

    def unbatch(self, output: list[np.ndarray]) -> list[np.ndarray]:
        return output

    def encode_response(self, output: np.ndarray) -> dict:
        return {"predictions": common.answers(output, self.labels)}


if __name__ == "__main__":
    api = Classifier(max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=WORKERS, fast_queue=True)
    server.run(
        host="127.0.0.1",
        port=int(os.environ.get("PORT", "8103")),
        log_level="warning",
        generate_client_file=False,
    )
