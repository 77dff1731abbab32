"""The baseline tutorials write: one `keras.Model.predict` call per request, on the same model.

uvicorn benchmarks.naive_service:app --port 8102     (MODEL_DIR selects the model version)
"""

import io
import os
from pathlib import Path
from typing import Annotated

import keras
import numpy as np
from fastapi import FastAPI, File, UploadFile
from PIL import Image

from app.model import resolve_version_dir

MODEL_DIR = resolve_version_dir(Path(os.environ.get("MODEL_DIR", "models/cifar10")))
inputs = keras.Input((32, 32, 3), dtype="uint8")
outputs = keras.layers.TFSMLayer(str(MODEL_DIR), call_endpoint="serving_default")(inputs)
model = keras.Model(inputs, outputs)
app = FastAPI(title="naive baseline")


@app.post("/predict")
async def predict(files: Annotated[list[UploadFile], File()]) -> dict:
    images = []
    for upload in files:
        image = Image.open(io.BytesIO(await upload.read())).convert("RGB").resize((32, 32))
        images.append(np.asarray(image))
    probabilities = model.predict(np.stack(images), verbose=0)["probabilities"]
    return {
        "predictions": [
            {"class": int(np.argmax(p)), "confidence": float(np.max(p))} for p in probabilities
        ]
    }
