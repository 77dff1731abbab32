"""The serving contract (docs/model-contract.md), checked alike whichever runtime loaded the model.

Each backend describes what its runtime sees (names, dtypes, shapes) as a `Signature`; the rules
live here once, so a model that breaks them is refused with the same words on every backend.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
# Optional second input of a model with adaptive views: per image, the one-view confidence below
# which the graph adds the other test-time views (0: one view, inf: every view).
VIEWS_INPUT = "all_views_below"
# What a request may ask of such a model: `auto` the other views only below the version's
# threshold, `one` never (one pass per image), `all` always.
Views = Literal["auto", "one", "all"]
SIGNATURE = "serving_default"
# The INT8 model NNCF quantized from the SavedModel (training.quantize), inside the version
# folder; only the openvino backend reads it.
INT8_MODEL = Path("int8") / "model.xml"


def is_version_name(name: str) -> bool:
    """Version folders and URL versions are ASCII digits: str.isdigit() alone accepts '³'."""
    return name.isascii() and name.isdigit()


class ModelLoadError(RuntimeError):
    """The model folder is missing, corrupt, or breaks the serving contract."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot serve the model at {path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class TensorInfo:
    """One input or output as a runtime sees it: numpy dtype name, shape (None: unknown)."""

    dtype: str
    shape: tuple[int | None, ...] | None


@dataclass(frozen=True)
class Signature:
    """The named inputs and outputs of a loaded model."""

    inputs: Mapping[str, TensorInfo]
    outputs: Mapping[str, TensorInfo]


def check_signature(version_dir: Path, signature: Signature, num_labels: int) -> tuple[int, int]:
    """Enforce the contract: `images` uint8 [None, H, W, 3] in (and optionally `all_views_below`
    float32 [None]), `probabilities` float32 out; returns (height, width)."""
    if set(signature.inputs) not in ({INPUT_NAME}, {INPUT_NAME, VIEWS_INPUT}):
        raise ModelLoadError(
            version_dir,
            f"signature inputs are {sorted(signature.inputs)}, not ['images'] "
            f"or ['{VIEWS_INPUT}', 'images']",
        )
    views = signature.inputs.get(VIEWS_INPUT)
    if views is not None and (views.dtype != "float32" or views.shape not in ((None,), None)):
        raise ModelLoadError(
            version_dir,
            f"input '{VIEWS_INPUT}' is {views.dtype} {views.shape}, not float32 [None]",
        )
    spec = signature.inputs[INPUT_NAME]
    shape = list(spec.shape) if spec.shape is not None else None
    if spec.dtype != "uint8" or shape is None or len(shape) != 4 or shape[3] != 3:
        raise ModelLoadError(
            version_dir, f"input 'images' is {spec.dtype} {shape}, not uint8 [None, H, W, 3]"
        )
    if shape[1] is None or shape[2] is None:
        raise ModelLoadError(version_dir, "input 'images' must fix height and width")
    if shape[1] != shape[2]:
        raise ModelLoadError(
            version_dir,
            f"input 'images' is {shape[1]}x{shape[2]}; the service resizes uploads to a square",
        )
    if OUTPUT_NAME not in signature.outputs:
        raise ModelLoadError(version_dir, "signature has no 'probabilities' output")
    out = signature.outputs[OUTPUT_NAME]
    out_shape = list(out.shape) if out.shape is not None else None
    if out.dtype != "float32" or out_shape is None or out_shape[-1:] != [num_labels]:
        raise ModelLoadError(
            version_dir,
            f"output 'probabilities' is {out.dtype} {out_shape}, "
            f"not float32 [None, {num_labels}] for the {num_labels} labels in metadata.json",
        )
    return int(shape[1]), int(shape[2])


def error_detail(exc: BaseException, *, last_line: bool = False) -> str:
    """A runtime's own words about a failure, one line, bounded: they say which file is broken.

    TensorFlow puts the reason on its first line; OpenVINO on its last (after the C++ check site).
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
    return f"{type(exc).__name__}: {(lines[-1] if last_line else lines[0])[:300]}"
