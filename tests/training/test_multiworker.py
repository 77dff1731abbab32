"""Training past one machine: real `python -m training` workers on 127.0.0.1, joined into one
MultiWorkerMirroredStrategy cluster by TF_CONFIG, on the tiny npz fixture (3 steps an epoch)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from training import hardware

# How long a worker may take before the test gives up on it. Not a timing check: a generous
# bound (a run takes one to two minutes on 2 busy cores) so that a hang fails instead of
# waiting for pytest's own timeout.
PATIENCE_S = 480


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


class Cluster:
    """Worker processes started with one TF_CONFIG cluster; each logs to <root>/worker-<i>.*."""

    def __init__(self, root: Path, data: Path) -> None:
        self.root = root
        self.data = data
        self.processes: list[subprocess.Popen] = []

    def start(self, *args: str, start_only: int | None = None) -> None:
        """`python -m training` for both workers of a cluster of two, or only for the worker
        `start_only` (the other never starts)."""
        cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
        self.processes = []
        for index in (0, 1) if start_only is None else (start_only,):
            task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            env = os.environ | {"TF_CONFIG": json.dumps(task), "TF_CPP_MIN_LOG_LEVEL": "2"}
            command = [sys.executable, "-m", "training", "--data", str(self.data)]
            command += ["--batch-size", "32", "--val-size", "40", "--precision", "float32"]
            command += ["--models-dir", str(self.root / "models")]
            command += ["--checkpoints-dir", str(self.root / "checkpoints"), *args]
            with self.out(index).open("w") as out, self.err(index).open("w") as err:
                self.processes.append(
                    subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err)
                )

    def out(self, index: int) -> Path:
        return self.root / f"worker-{index}.out"

    def err(self, index: int) -> Path:
        return self.root / f"worker-{index}.err"

    def wait(self) -> list[int]:
        """Every started worker's exit status."""
        deadline = time.monotonic() + PATIENCE_S
        codes = []
        for process in self.processes:
            try:
                codes.append(process.wait(timeout=max(deadline - time.monotonic(), 1)))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"a worker hung for {PATIENCE_S} s\n{self.logs()}")
        return codes

    def wait_for_output(self, text: str) -> None:
        """Until every started worker has printed `text`; fails if one exits first."""
        deadline = time.monotonic() + PATIENCE_S
        indices = range(len(self.processes))
        while not all(text in self.out(i).read_text() for i in indices):
            assert all(p.poll() is None for p in self.processes), self.logs()
            assert time.monotonic() < deadline, f"no {text!r} in {PATIENCE_S} s\n{self.logs()}"
            time.sleep(0.05)

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    def logs(self) -> str:
        tails = [
            (self.out(i).read_text()[-1500:], self.err(i).read_text()[-3000:])
            for i in range(len(self.processes))
        ]
        return "\n".join(f"--- worker {i} ---\n{out}\n{err}" for i, (out, err) in enumerate(tails))


@pytest.fixture
def cluster(npz_dir: Path, tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(tmp_path, npz_dir)
    yield started
    started.kill()


def versions(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "models" / "cifar10").iterdir())


def test_two_workers_train_one_model_that_the_app_serves(cluster: Cluster) -> None:
    cluster.start("--epochs", "2")

    assert cluster.wait() == [0, 0], cluster.logs()

    first_lines = [cluster.out(i).read_text().splitlines()[:2] for i in (0, 1)]
    assert first_lines[0][1].startswith("strategy: MultiWorkerMirroredStrategy | worker 0 of 2")
    assert first_lines[1][1].startswith("strategy: MultiWorkerMirroredStrategy | worker 1 of 2")
    assert versions(cluster.root) == ["1"]  # one export, no leftover .partial folder
    version_dir = cluster.root / "models" / "cifar10" / "1"
    training = json.loads((version_dir / "metadata.json").read_text())["training"]
    assert training["strategy"] == "MultiWorkerMirroredStrategy"
    assert training["cluster"] == {"workers": 2, "chief": "worker:0"}
    assert training["batch_size"] == 32 and training["steps_per_epoch"] == 120 // 32
    history = (version_dir / "report" / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["0", "1"]
    # Worker 1's temporary checkpoints are gone, and so is the chief's finished backup.
    assert sorted(p.name for p in (cluster.root / "checkpoints").iterdir()) == ["cifar10"]
    assert not (cluster.root / "checkpoints" / "cifar10" / "backup").exists()

    from app.model import load_classifier

    classifier = load_classifier(version_dir)
    probabilities = classifier.predict(np.zeros((3, 32, 32, 3), np.uint8))
    assert probabilities.shape == (3, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)


def test_a_dead_worker_fails_the_run_and_a_restart_resumes(cluster: Cluster) -> None:
    checkpoints = cluster.root / "checkpoints"
    cluster.start("--epochs", "4")
    cluster.wait_for_output("Epoch 2/4")  # both workers have saved epoch 1's checkpoint

    cluster.processes[1].kill()

    assert cluster.processes[0].wait(timeout=PATIENCE_S) != 0
    assert "the cluster lost a worker" in cluster.err(0).read_text(), cluster.logs()
    assert not (cluster.root / "models").exists()
    saved = [
        json.loads((checkpoints / folder / "backup" / "training_metadata.json").read_text())
        for folder in ("cifar10", "cifar10.worker-1")
    ]
    assert saved[0] == saved[1] and 1 <= saved[0]["epoch"] < 4

    # A worker that lost its checkpoints would start over while the chief resumed: both stop.
    kept = checkpoints / "kept"
    (checkpoints / "cifar10.worker-1").rename(kept)
    cluster.start("--epochs", "4", "--resume")
    assert 0 not in cluster.wait()
    for worker in (0, 1):
        assert f"resume from epochs [{saved[0]['epoch']}, 0]" in cluster.err(worker).read_text()
    shutil.rmtree(checkpoints / "cifar10.worker-1")  # what the fresh worker began
    kept.rename(checkpoints / "cifar10.worker-1")

    cluster.start("--epochs", "4", "--resume")

    assert cluster.wait() == [0, 0], cluster.logs()
    assert versions(cluster.root) == ["1"]
    version_dir = cluster.root / "models" / "cifar10" / "1"
    history = (version_dir / "report" / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["0", "1", "2", "3"]  # each once
    assert sorted(p.name for p in checkpoints.iterdir()) == ["cifar10"]


def test_a_worker_that_never_starts_fails_the_run(cluster: Cluster) -> None:
    cluster.start("--epochs", "2", "--cluster-wait-s", "5", start_only=0)

    [code] = cluster.wait()
    assert code != 0
    assert "the cluster of 2 did not form within 5 s" in cluster.err(0).read_text()
    assert not (cluster.root / "models").exists()


@pytest.mark.parametrize(
    ("jobs", "task", "expected"),
    [
        ({"worker": ["a:1"]}, ("worker", 0), None),  # one machine
        ({"worker": ["a:1", "b:1"]}, ("worker", 1), ("worker", 1, 1, 2)),
        ({"chief": ["a:1"], "worker": ["b:1"]}, ("chief", 0), ("chief", 0, 0, 2)),
        ({"chief": ["a:1"], "worker": ["b:1"]}, ("worker", 0), ("worker", 0, 1, 2)),
    ],
)
def test_tf_config_names_this_workers_place(
    jobs: dict, task: tuple[str, int], expected: tuple | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_type, index = task
    config = {"cluster": jobs, "task": {"type": task_type, "index": index}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))

    worker = hardware.cluster_worker()

    assert (worker and (worker.task_type, worker.task_index, worker.rank, worker.size)) == expected


def test_a_broken_tf_config_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_CONFIG", "{'cluster': ")
    with pytest.raises(ValueError, match="TF_CONFIG must be JSON"):
        hardware.cluster_worker()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]}}))
    with pytest.raises(ValueError, match="TF_CONFIG must be JSON"):
        hardware.cluster_worker()
    monkeypatch.delenv("TF_CONFIG")
    assert hardware.cluster_worker() is None
