"""What the machine is and how to train on it: precision that follows the hardware, and the
distribution strategy. Every training figure names the hardware it came from, so this is also
where the CPU's name and flags are read."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
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


@contextlib.contextmanager
def precision_policy(precision: Precision) -> Iterator[None]:
    """Keras's global dtype policy set to `precision` (the model is built and trained under
    it), then restored."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision.policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _precision(name: str, reason: str) -> Precision:
    policy = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}[name]
    return Precision(name, policy, reason)


class ClusterError(RuntimeError):
    """A TF_CONFIG cluster that did not form, or lost a worker: the run stops on every worker."""


@dataclass(frozen=True)
class Worker:
    """This process's place in a TF_CONFIG cluster."""

    task_type: str  # "chief" or "worker", as TF_CONFIG names it
    task_index: int
    rank: int  # 0..size-1; 0 is the chief: task "chief", or "worker" 0 when there is none
    size: int  # the workers that train together (chief included)

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        role = "chief, writes the model" if self.is_chief else "writes no model"
        return f"worker {self.rank} of {self.size} ({self.task_type}:{self.task_index}, {role})"


def cluster_worker() -> Worker | None:
    """This process's place when TF_CONFIG names a cluster of two or more workers, else None."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
        task_type, task_index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            "TF_CONFIG must be JSON with a 'cluster' of 'chief'/'worker' addresses and this "
            f"process's 'task' type and index ({error!r})"
        ) from error
    if chiefs + workers < 2:
        return None  # a cluster of one is this machine
    if task_type not in ("chief", "worker") or chiefs > 1:
        raise ValueError(f"TF_CONFIG: a 'chief' (at most one) or a 'worker' trains, got {task}")
    rank = 0 if task_type == "chief" else task_index + chiefs
    return Worker(task_type, task_index, rank, chiefs + workers)


def choose_strategy(
    worker: Worker | None = None, cluster_wait_s: float = 600.0
) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy in a TF_CONFIG cluster; else all visible GPUs through
    MirroredStrategy, else the default (one GPU or the CPU).

    In a cluster, creating the strategy waits until every worker has joined. TensorFlow's
    default wait has no end (measured: a chief whose worker never started waited silently,
    SIGTERM ignored), so the coordination service is configured first to give up after
    `cluster_wait_s`. A worker that dies later is TensorFlow's to notice: the coordination
    service's heartbeats (10-35 s after a kill on 127.0.0.1 here) or a refused connection
    abort every collective, and the run fails on each worker (training.fit).
    """
    if worker is None:
        if len(gpus()) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    from tensorflow.python.eager import context  # no public API sets the wait

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    leader = "chief" if "chief" in resolver.cluster_spec().jobs else "worker"
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=f"/job:{leader}/replica:0/task:0",
        cluster_register_timeout_in_ms=round(cluster_wait_s * 1000),
    )
    # Without the barrier only the other workers time out; the chief would still wait forever.
    context.context().coordination_service.cluster_register_with_barrier = True
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError) as error:
        raise ClusterError(
            f"{worker.describe()}: the cluster of {worker.size} did not form within "
            f"{cluster_wait_s:g} s (--cluster-wait-s). Start every worker with the same "
            f"TF_CONFIG cluster and its own task. TensorFlow: {tf_reason(error)}"
        ) from error


@dataclass(frozen=True)
class Machine:
    """Where a run trains: its precision, the hardware, and the distribution strategy."""

    precision: Precision
    description: str  # describe(): the CPU or GPUs, for logs and metadata
    worker: Worker | None  # this process's place in a TF_CONFIG cluster, if any
    strategy: tf.distribute.Strategy
    strategy_name: str  # as metadata.json names it


def tf_reason(error: tf.errors.OpError) -> str:
    """TensorFlow's reason for a failed collective or barrier, without the trace around it."""
    reason = error.message.split("aborted by:", 1)[-1]
    for tail in ("[[", "Additional GRPC", "The error could be from"):
        reason = reason.split(tail, 1)[0]
    return " ".join(reason.split())[:400]
