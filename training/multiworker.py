"""What training in a TF_CONFIG cluster needs beyond one machine's run: how the batches are
split, two Keras bugs worked around, and the checks that keep the workers in step.

On one machine none of this runs except `shard_by_data`, whose options change nothing there.
The two-worker test (tests/training/test_multiworker.py) runs each piece for real.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import tensorflow as tf

from training import hardware


def shard_by_data() -> tf.data.Options:
    """How a TF_CONFIG cluster splits the batches: tf.data's DATA auto-shard.

    Each worker builds the whole pipeline and keeps its 1/N part of every global batch. That is
    correct here because every worker shuffles the same in-memory arrays with the same seed, so
    the parts are disjoint and cover each batch (seen with two workers, epoch after epoch). FILE
    sharding needs files. An explicit `shard(N, index)` does not suit `fit`: tf.distribute
    splits every batch it is given N ways, so Keras would count N times fewer steps per epoch
    than the shard holds. The price: every worker also augments the parts it drops, small
    beside the model's step. On one machine these options change nothing.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def checkpoint_dir(checkpoints_dir: Path, name: str, worker: hardware.Worker | None) -> Path:
    """Where this process keeps its checkpoints, history and fit clock: <checkpoints>/<name>/.
    Other workers than the chief keep theirs in a folder of their own (the folders may be on
    one shared disk) and delete it at the end."""
    if worker and not worker.is_chief:
        return checkpoints_dir / f"{name}.worker-{worker.rank}"
    return checkpoints_dir / name


def allow_multi_worker_fit(model: keras.Model) -> None:
    """Two Keras 3 bugs stop `fit` under MultiWorkerMirroredStrategy (keras-team/keras#20585,
    still in Keras 3.15): fit averages the first input batch across workers with
    `strategy.reduce`, which takes no (images, labels) tuple, and it averages each step's scalar
    logs over `axis=0`, which a scalar lacks. Clearing the model's own strategy skips the first
    (fit then runs inside `strategy.scope()` and builds the rest while tracing); logs handed
    back as 1-element vectors turn the second into the mean over workers. The two-worker test
    (tests/training/test_multiworker.py) fails if a Keras upgrade changes either."""
    model._distribute_strategy = None
    for name in ("train_step", "test_step"):
        step = getattr(model, name)

        def vector_logs(data, step=step) -> dict[str, tf.Tensor]:
            return {key: tf.reshape(value, [1]) for key, value in step(data).items()}

        setattr(model, name, vector_logs)


def same_start_on_every_worker(strategy: tf.distribute.Strategy, backup_dir: Path) -> None:
    """Each worker restores its own checkpoint. Workers that would resume from different epochs
    (one lost its folder) would diverge, or hang once their collectives no longer pair up, so
    they compare the epoch in BackupAndRestore's metadata before fit and stop instead."""
    saved = backup_dir / "training_metadata.json"
    epoch = json.loads(saved.read_text())["epoch"] if saved.is_file() else 0
    mine = strategy.experimental_distribute_values_from_function(lambda _: tf.constant([epoch]))
    epochs = strategy.gather(mine, axis=0).numpy().tolist()
    if len(set(epochs)) > 1:
        raise hardware.ClusterError(
            f"the workers would resume from epochs {epochs} (in worker order): each needs its "
            "checkpoint folder from the same interrupted run. Start them all without --resume "
            "to train afresh."
        )


def wait_for_every_worker(strategy: tf.distribute.Strategy, worker: hardware.Worker) -> None:
    """A barrier, one all-reduce, at the end of the run: no worker exits while the chief still
    exports (TensorFlow would report that exit as a crash), and if the chief fails there, the
    others fail too."""
    try:
        one = strategy.experimental_distribute_values_from_function(lambda _: tf.constant(1.0))
        strategy.reduce("SUM", one, axis=None)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as error:
        raise hardware.ClusterError(
            f"{worker.describe()}: not every worker reached the end of the run (the chief "
            f"exports before it). TensorFlow: {hardware.tf_reason(error)}"
        ) from error


def leave_after_fit(
    strategy: tf.distribute.Strategy, worker: hardware.Worker, work_dir: Path
) -> None:
    """A worker other than the chief, once fit is done: wait while the chief exports, then
    delete this worker's checkpoints. It writes no model."""
    wait_for_every_worker(strategy, worker)
    shutil.rmtree(work_dir, ignore_errors=True)
    print(f"{worker.describe()}: done, the chief exported the model", flush=True)
