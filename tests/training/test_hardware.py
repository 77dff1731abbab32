"""Precision follows the hardware; the CPU's flags are read from /proc/cpuinfo."""

from pathlib import Path

import pytest

from training import hardware


@pytest.mark.parametrize(
    ("flags", "gpu", "expected"),
    [
        ({"avx2", "fma"}, False, "float32"),
        ({"avx2", "avx512f", "amx_bf16", "amx_tile"}, False, "bfloat16"),
        ({"avx512f", "avx512_bf16"}, False, "bfloat16"),
        ({"avx2"}, True, "float16"),
    ],
)
def test_auto_precision_follows_the_hardware(
    flags: set[str], gpu: bool, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    monkeypatch.setattr(hardware, "gpus", lambda: ["GPU:0"] if gpu else [])

    precision = hardware.choose_precision("auto")

    assert precision.name == expected
    assert precision.policy == {"float32": "float32"}.get(expected, f"mixed_{expected}")
    assert precision.reason


def test_an_explicit_precision_wins_and_a_wrong_one_is_refused() -> None:
    assert hardware.choose_precision("bfloat16").policy == "mixed_bfloat16"
    with pytest.raises(ValueError, match="precision must be one of"):
        hardware.choose_precision("int8")


def test_this_machines_flags_and_name_are_read() -> None:
    text = Path("/proc/cpuinfo").read_text()
    assert (" avx2" in text) == ("avx2" in hardware.cpu_flags())
    assert hardware.cpu_name() in hardware.describe() or hardware.gpus()
