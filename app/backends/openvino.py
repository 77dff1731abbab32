"""OpenVINO: the same SavedModel converted at load (no TensorFlow needed), compiled for the CPU.

`Core.read_model` reads the SavedModel folder itself (OpenVINO's TensorFlow frontend) and keeps
the tensor names `images` and `probabilities`; the contract is still checked on what it made.
Not `openvino.convert_model`: that is the conversion tool's entry point, which is 10x slower
here and sends usage telemetry over the network unless the user opted out. At int8 it reads
the version's INT8 model instead (`int8/model.xml`, written by `python -m training.quantize`).
"""

import functools
import queue
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.properties as props
import openvino.properties.hint as hints

from app.backends import Precision, all_views_unless
from app.contract import (
    INPUT_NAME,
    INT8_MODEL,
    OUTPUT_NAME,
    VIEWS_INPUT,
    ModelLoadError,
    Signature,
    TensorInfo,
    error_detail,
)
from app.cpu import available_cpus

DEVICE = "CPU"
_NUMPY_NAMES = {"u8": "uint8", "f32": "float32"}  # the contract's dtypes, as numpy names them
# OpenVINO's capability for each precision, fastest first. INT8 runs on AVX2 too (faster with
# VNNI or AMX); BF16 is listed only where the CPU has it (AVX512_BF16 or AMX): elsewhere a bf16
# hint would quietly run as f32.
_CAPABILITIES = {"int8": "INT8", "bf16": "BF16", "f32": "FP32"}


@functools.cache
def native_precisions() -> tuple[Precision, ...]:
    """The precisions this CPU computes natively, as OpenVINO itself reports, fastest first."""
    capabilities = ov.Core().get_property(DEVICE, props.device.capabilities())
    return tuple(p for p, name in _CAPABILITIES.items() if name in capabilities)  # type: ignore[misc]


class OpenVINOBackend:
    """The SavedModel, or its INT8 model, compiled by OpenVINO for this process's CPU quota."""

    name = "openvino"

    def __init__(self, version_dir: Path, precision: Precision, threads: int | None = None):
        core = ov.Core()
        source = version_dir / INT8_MODEL if precision == "int8" else version_dir
        if precision == "int8" and not source.is_file():
            raise ModelLoadError(
                version_dir,
                f"INFERENCE_PRECISION=int8 needs {INT8_MODEL}, which this version lacks "
                f"(make it with: python -m training.quantize {version_dir})",
            )
        try:
            model = core.read_model(str(source))
        except Exception as exc:  # the frontend reports a broken folder as several types
            detail = error_detail(exc, last_line=True)
            what = f"INT8 model ({INT8_MODEL})" if precision == "int8" else "SavedModel"
            raise ModelLoadError(version_dir, f"not a loadable {what} ({detail})") from exc
        threads = threads or available_cpus()
        config = {
            # Explicit, not OpenVINO's default: the golden check's tolerance depends on it. The
            # INT8 model's layers that stay float run in f32: as fast as bf16 there and closer
            # to the golden answers (cifar10/2 on a Zen 4: 376 against 372 img/s; 0 against 1
            # of 64 golden top-1 changed).
            hints.inference_precision(): ov.Type.bf16 if precision == "bf16" else ov.Type.f32,
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
        self.precision = precision
        self.threads = int(self._compiled.get_property(props.inference_num_threads()))
        self.signature = Signature(
            inputs={_name(port, INPUT_NAME): _info(port) for port in model.inputs},
            outputs={_name(port, OUTPUT_NAME): _info(port) for port in model.outputs},
        )
        # An infer request runs one call at a time; the batcher may call from several threads.
        self._requests: queue.SimpleQueue[ov.InferRequest] = queue.SimpleQueue()

    def predict(self, images: np.ndarray, views_below: np.ndarray | None = None) -> np.ndarray:
        inputs = {INPUT_NAME: np.ascontiguousarray(images)}
        if VIEWS_INPUT in self.signature.inputs:
            inputs[VIEWS_INPUT] = all_views_unless(views_below, len(images))
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            # share_outputs=False (the default) copies the result out of the request's buffer,
            # so the request can go back to the pool.
            result = request.infer(inputs, share_inputs=True)
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
