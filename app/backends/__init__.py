"""Inference runtimes behind one small interface: each serves one SavedModel version.

One module per runtime. Importing this package imports neither runtime: the slim image has
OpenVINO without TensorFlow, so each runtime is imported only when it is chosen.
"""

import importlib.util
import logging
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from app.contract import ModelLoadError, Signature

logger = logging.getLogger(__name__)

BackendChoice = Literal["auto", "tensorflow", "openvino"]
PrecisionChoice = Literal["auto", "f32", "bf16"]


class Backend(Protocol):
    """A loaded model version in one runtime."""

    name: str  # "tensorflow" or "openvino"
    precision: str  # what the runtime computes in: "f32" or "bf16"
    signature: Signature  # inputs and outputs as the runtime sees them, for the contract check

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, num_labels) float32; blocking and thread-safe."""
        ...


def installed(module: str) -> bool:
    """Whether a runtime can be imported, without importing it (TensorFlow takes seconds)."""
    return importlib.util.find_spec(module) is not None


def resolve_backend(choice: BackendChoice) -> str:
    """`auto`: TensorFlow when it sees a GPU (OpenVINO here serves the CPU only), else OpenVINO
    when installed, else TensorFlow."""
    if choice != "auto":
        return choice
    if installed("tensorflow"):
        from app.backends import tensorflow as tensorflow_backend

        if tensorflow_backend.sees_gpu():
            return "tensorflow"
    return "openvino" if installed("openvino") else "tensorflow"


def load_backend(
    version_dir: Path,
    backend: BackendChoice = "auto",
    precision: PrecisionChoice = "auto",
    threads: int | None = None,
) -> Backend:
    """Load `version_dir` in the chosen runtime; a failure is a ModelLoadError naming the reason.
    `threads`: the CPUs one openvino call may use (TensorFlow's pools are per process)."""
    if precision not in ("auto", "f32", "bf16"):
        raise ValueError(f"precision must be one of auto, f32, bf16; got {precision!r}")
    name = resolve_backend(backend)
    if name not in ("tensorflow", "openvino"):
        raise ValueError(f"backend must be one of auto, tensorflow, openvino; got {backend!r}")
    if not installed(name):
        raise ModelLoadError(
            version_dir, f"INFERENCE_BACKEND={backend} needs {name}, which is not installed"
        )
    if name == "openvino":
        from app.backends.openvino import OpenVINOBackend

        return OpenVINOBackend(version_dir, precision, threads)
    from app.backends.tensorflow import TensorFlowBackend

    if precision == "bf16":
        logger.warning("INFERENCE_PRECISION=bf16 applies to openvino only; tensorflow serves f32")
    return TensorFlowBackend(version_dir)
