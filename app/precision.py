"""Which precision serves a version: an explicit INFERENCE_PRECISION is obeyed or refused, never
replaced; `auto` follows one stated rule.

`auto`: the fastest precision (int8, bf16, f32) that this machine computes natively and whose
test accuracy, recorded in the version's metadata.json (`precisions`, written by
`python -m training.quantize`), is within `MAX_ACCURACY_LOSS` of float32's; the loader then
takes the first of those whose golden check passes (app.model). f32 always qualifies: it is what
the model was exported in.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.backends import Precision, PrecisionChoice
from app.contract import INT8_MODEL

MAX_ACCURACY_LOSS = 0.003  # 0.3 points of test accuracy


@dataclass(frozen=True)
class Plan:
    """The precisions to try, in order, and why; `explicit`: the user named the one to serve."""

    candidates: tuple[Precision, ...]
    explicit: bool
    notes: tuple[str, ...]  # why auto passed over a faster precision


def plan(
    choice: PrecisionChoice,
    backend: str,
    native: Sequence[Precision],
    version_dir: Path,
    metadata: dict[str, Any],
) -> Plan:
    """The precisions to try for `choice` on `backend`, which computes `native` (fastest first)."""
    if choice != "auto":
        return Plan((choice,), explicit=True, notes=())
    recorded = metadata.get("precisions") or {}
    reference = _accuracy(recorded, "f32")
    candidates: list[Precision] = []
    notes: list[str] = []
    for precision in native:
        if precision == "f32":
            break
        accuracy = _accuracy(recorded, precision)
        if precision == "int8" and not (version_dir / INT8_MODEL).is_file():
            notes.append(f"int8: no {INT8_MODEL}")
        elif accuracy is None or reference is None:
            notes.append(f"{precision}: no test accuracy recorded beside f32's")
        elif reference - accuracy > MAX_ACCURACY_LOSS:
            notes.append(
                f"{precision}: {100 * accuracy:.2f} % on test against f32's "
                f"{100 * reference:.2f} %, more than {100 * MAX_ACCURACY_LOSS:.1f} points lower"
            )
        else:
            candidates.append(precision)
    skipped = [p for p in ("int8", "bf16") if p not in native]
    if skipped:
        notes.append(f"{', '.join(skipped)}: {backend} does not compute natively here")
    return Plan((*candidates, "f32"), explicit=False, notes=tuple(notes))


def _accuracy(recorded: dict[str, Any], precision: str) -> float | None:
    value = (recorded.get(precision) or {}).get("test_accuracy")
    return float(value) if isinstance(value, int | float) else None
