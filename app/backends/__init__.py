"""Inference runtimes behind one small interface: each serves one SavedModel version.

One module per runtime. Importing this package imports neither runtime: the slim image has
OpenVINO without TensorFlow, so each runtime is imported only when it is chosen.
"""

import importlib.util
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from app.contract import ModelLoadError, Signature

BackendChoice = Literal["auto", "tensorflow", "openvino"]
PrecisionChoice = Literal["auto", "f32", "bf16", "int8"]
Precision = Literal["f32", "bf16", "int8"]


class Backend(Protocol):
    """A loaded model version in one runtime."""

    name: str  # "tensorflow" or "openvino"
    precision: Precision  # what the runtime computes in
    signature: Signature  # inputs and outputs as the runtime sees them, for the contract check

    def predict(self, images: np.ndarray, views_below: np.ndarray | None = None) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, num_labels) float32; blocking and thread-safe.
        `views_below` (N,) float32 feeds a model with adaptive views (None: every view);
        a model without that input ignores it."""
        ...


def all_views_unless(views_below: np.ndarray | None, count: int) -> np.ndarray:
    """What a model with adaptive views is fed: the thresholds given, else every view (the
    answer golden.npz holds)."""
    if views_below is None:
        return np.full(count, np.inf, np.float32)
    return np.ascontiguousarray(views_below, np.float32)


def installed(module: str) -> bool:
    """Whether a runtime can be imported, without importing it (TensorFlow takes seconds)."""
    return importlib.util.find_spec(module) is not None


def gpu_present() -> bool:
    """Whether the machine shows an NVIDIA GPU, asked of the driver's files: importing
    TensorFlow to ask takes seconds and prints CUDA errors on every machine without one."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return Path("/dev/nvidia0").exists() or (gpus.is_dir() and any(gpus.iterdir()))


def resolve_backend(choice: BackendChoice) -> str:
    """`auto`: TensorFlow when it sees a GPU (OpenVINO here serves the CPU only), else OpenVINO
    when installed, else TensorFlow. TensorFlow is imported to ask only where a GPU shows."""
    if choice not in ("auto", "tensorflow", "openvino"):
        raise ValueError(f"backend must be one of auto, tensorflow, openvino; got {choice!r}")
    if choice != "auto":
        return choice
    if installed("tensorflow") and gpu_present():
        from app.backends import tensorflow as tensorflow_backend

        if tensorflow_backend.sees_gpu():
            return "tensorflow"
    return "openvino" if installed("openvino") else "tensorflow"


def native_precisions(backend: str) -> tuple[Precision, ...]:
    """What `backend` computes natively on this machine, fastest first. TensorFlow serves the
    exported float32 graph as it is."""
    if backend == "openvino":
        from app.backends.openvino import native_precisions as openvino_native

        return openvino_native()
    return ("f32",)


def load_backend(
    version_dir: Path, backend: str, precision: Precision, threads: int | None = None
) -> Backend:
    """Load `version_dir` in runtime `backend` (resolved: not auto) computing in `precision`;
    a failure, or a precision the runtime cannot compute here, is a ModelLoadError.
    `threads`: the CPUs one openvino call may use (TensorFlow's pools are per process)."""
    if not installed(backend):
        raise ModelLoadError(version_dir, f"backend {backend} is not installed")
    if precision not in native_precisions(backend):
        raise ModelLoadError(
            version_dir,
            f"INFERENCE_PRECISION={precision}: {backend} on this machine computes only "
            f"{', '.join(native_precisions(backend))}",
        )
    if backend == "openvino":
        from app.backends.openvino import OpenVINOBackend

        return OpenVINOBackend(version_dir, precision, threads)
    from app.backends.tensorflow import TensorFlowBackend

    return TensorFlowBackend(version_dir)
