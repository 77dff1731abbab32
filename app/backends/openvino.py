"""OpenVINO: the same SavedModel converted at load (no TensorFlow needed), compiled for the CPU.

`Core.read_model` reads the SavedModel folder itself (OpenVINO's TensorFlow frontend) and keeps
the tensor names `images` and `probabilities`; the contract is still checked on what it made.
Not `openvino.convert_model`: that is the conversion tool's entry point, which is 10x slower
here and sends usage telemetry over the network unless the user opted out.
"""

import logging
import queue
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.properties as props
import openvino.properties.hint as hints

from app.contract import (
    INPUT_NAME,
    OUTPUT_NAME,
    ModelLoadError,
    Signature,
    TensorInfo,
    error_detail,
)
from app.cpu import available_cpus

logger = logging.getLogger(__name__)

DEVICE = "CPU"
_TYPES = {"f32": ov.Type.f32, "bf16": ov.Type.bf16}
_NUMPY_NAMES = {"u8": "uint8", "f32": "float32"}  # the contract's dtypes, as numpy names them


def supports_bf16(core: ov.Core) -> bool:
    """Whether the CPU computes bf16 natively (AVX512_BF16 or AMX), as OpenVINO itself reports:
    elsewhere a bf16 hint would run as f32 anyway."""
    return "BF16" in core.get_property(DEVICE, props.device.capabilities())


class OpenVINOBackend:
    """The SavedModel compiled by OpenVINO for this process's CPU quota."""

    name = "openvino"

    def __init__(self, version_dir: Path, precision: str = "auto", threads: int | None = None):
        core = ov.Core()
        try:
            model = core.read_model(str(version_dir))
        except Exception as exc:  # the frontend reports a broken folder as several types
            detail = error_detail(exc, last_line=True)
            raise ModelLoadError(version_dir, f"not a loadable SavedModel ({detail})") from exc
        # Explicit, not OpenVINO's default: the golden check's tolerance depends on it.
        wanted = precision if precision != "auto" else "bf16" if supports_bf16(core) else "f32"
        threads = threads or available_cpus()
        config = {
            hints.inference_precision(): _TYPES[wanted],
            props.inference_num_threads(): threads,
            # One stream using every thread: the batcher already makes the batches.
            hints.performance_mode(): hints.PerformanceMode.LATENCY,
            # Unpinned: with WORKERS > 1 every process pins to the same cores, and a container's
            # CPU quota (cgroup cpu.max) is time on any core, not cores 0..n-1.
            hints.enable_cpu_pinning(): False,
        }
        try:
            self._compiled = core.compile_model(model, DEVICE, config)
        except Exception as exc:
            detail = error_detail(exc, last_line=True)
            raise ModelLoadError(version_dir, f"OpenVINO cannot compile it ({detail})") from exc
        got = self._compiled.get_property(hints.inference_precision())
        self.precision = "bf16" if got == ov.Type.bf16 else "f32"
        if wanted != self.precision:
            logger.warning(
                "INFERENCE_PRECISION=%s but this CPU has no native %s: serving %s",
                wanted,
                wanted,
                self.precision,
            )
        self.threads = int(self._compiled.get_property(props.inference_num_threads()))
        self.signature = Signature(
            inputs={_name(port, INPUT_NAME): _info(port) for port in model.inputs},
            outputs={_name(port, OUTPUT_NAME): _info(port) for port in model.outputs},
        )
        # An infer request runs one call at a time; the batcher may call from several threads.
        self._requests: queue.SimpleQueue[ov.InferRequest] = queue.SimpleQueue()

    def predict(self, images: np.ndarray) -> np.ndarray:
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            # share_outputs=False (the default) copies the result out of the request's buffer,
            # so the request can go back to the pool.
            result = request.infer({INPUT_NAME: np.ascontiguousarray(images)}, share_inputs=True)
            return result[OUTPUT_NAME]
        finally:
            self._requests.put(request)


def _name(port: ov.Output, wanted: str) -> str:
    """A tensor may carry several names; the contract's name wins when it is one of them."""
    names = port.get_names()
    if wanted in names:
        return wanted
    return min(names) if names else f"<unnamed {port.get_index()}>"


def _info(port: ov.Output) -> TensorInfo:
    shape = port.get_partial_shape()
    dims = (
        tuple(dim.get_length() if dim.is_static else None for dim in shape)
        if shape.rank.is_static
        else None
    )
    element = port.get_element_type().get_type_name()  # "u8", "f32", "bf16", "string", ...
    return TensorInfo(dtype=_NUMPY_NAMES.get(element, element), shape=dims)
