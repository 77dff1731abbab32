"""The least a FastAPI /predict costs here: the peers' HTTP work and no model.

uvicorn benchmarks.http_floor:app --port 8107

It reads the multipart `files` parts and decodes and answers them as the peers do
(benchmarks/peers/common.py), with a uniform answer in place of a model call: no middleware,
no dependencies, no batcher. Its latency at concurrency 1 plus one model call is the floor
under this service's.
"""

from typing import Annotated

import numpy as np
from fastapi import FastAPI, File, UploadFile

from benchmarks.peers import common

LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

app = FastAPI(title="HTTP floor")


@app.post("/predict")
async def predict(files: Annotated[list[UploadFile], File()]) -> dict:
    pixels = np.stack([common.to_pixels(await upload.read()) for upload in files])
    uniform = np.full((len(pixels), len(LABELS)), 1 / len(LABELS), np.float32)
    return {"predictions": common.answers(uniform, LABELS)}
