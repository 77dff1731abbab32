"""What the machine is and how to train on it: precision that follows the hardware, and the
distribution strategy. Every training figure names the hardware it came from, so this is also
where the CPU's name and flags are read."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
# The CPU flags that mean bfloat16 matrix math in hardware (Intel AMX or AVX-512 BF16). Without
# them, bfloat16 is emulated and several times slower than float32 (6x measured on an AVX2 EPYC).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class Precision:
    name: str  # float32 | bfloat16 | float16
    policy: str  # the Keras dtype policy
    reason: str


def cpu_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def gpus() -> list[tf.config.PhysicalDevice]:
    return tf.config.list_physical_devices("GPU")


def gpu_name(device: tf.config.PhysicalDevice) -> str:
    return tf.config.experimental.get_device_details(device).get("device_name", device.name)


def describe() -> str:
    """One line naming the hardware, for logs and metadata: `CPU (AMD EPYC, 2 cores, avx2)`."""
    found = gpus()
    if found:
        return f"{len(found)} GPU ({gpu_name(found[0])})"
    flags = cpu_flags()
    vector = next(
        (f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags), "no avx2"
    )
    return f"CPU ({cpu_name()}, {os.cpu_count()} cores, {vector})"


def allocator() -> str:
    """The malloc TensorFlow runs on: it doubles CPU training speed here (training/__main__)."""
    preload = os.environ.get("LD_PRELOAD", "")
    return "tcmalloc" if "tcmalloc" in preload else "jemalloc" if "jemalloc" in preload else "glibc"


def choose_precision(requested: str = "auto") -> Precision:
    """`auto`: float16 on a GPU, bfloat16 on a CPU with bf16 matrix units, else float32."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        return _precision(requested, "asked for with --precision")
    if gpus():
        return _precision("float16", "a GPU is visible")
    flags = cpu_flags() & set(BF16_CPU_FLAGS)
    if flags:
        return _precision("bfloat16", f"the CPU has {', '.join(sorted(flags))}")
    return _precision("float32", f"the CPU has none of {', '.join(BF16_CPU_FLAGS)} and no GPU")


def _precision(name: str, reason: str) -> Precision:
    policy = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}[name]
    return Precision(name, policy, reason)


def choose_strategy() -> tf.distribute.Strategy:
    """All visible GPUs through MirroredStrategy, else the default (one GPU or the CPU)."""
    if len(gpus()) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()
