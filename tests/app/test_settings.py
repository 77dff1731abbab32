"""Thread defaults follow the CPU quota; explicit settings win."""

import pytest

from app.settings import Settings


@pytest.mark.parametrize(
    ("cpus", "workers", "intra_op", "inter_op"),
    [(1, 1, 1, 1), (2, 2, 1, 2), (3, 2, 1, 2), (8, 2, 4, 2)],
)
def test_thread_defaults_share_the_quota_between_workers(
    monkeypatch, cpus: int, workers: int, intra_op: int, inter_op: int
) -> None:
    monkeypatch.setattr("app.settings.available_cpus", lambda: cpus)

    settings = Settings(workers=1)

    assert settings.effective_inference_workers == workers
    assert settings.effective_intra_op_threads == intra_op
    assert settings.effective_inter_op_threads == inter_op
    assert settings.effective_inference_workers * settings.effective_intra_op_threads <= cpus


def test_explicit_thread_settings_win(monkeypatch) -> None:
    monkeypatch.setattr("app.settings.available_cpus", lambda: 8)

    settings = Settings(inference_workers=1, intra_op_threads=3, inter_op_threads=2)

    assert (settings.effective_inference_workers, settings.effective_intra_op_threads) == (1, 3)
    assert settings.effective_inter_op_threads == 2


@pytest.mark.parametrize(
    ("cpus", "processes", "per_process", "effective_inference_workers", "intra_op"),
    [(1, 1, 1, 1, 1), (2, 2, 1, 2, 1), (8, 2, 4, 2, 2), (8, 3, 2, 2, 1), (2, 4, 1, 2, 1)],
)
def test_worker_processes_share_the_quota(
    monkeypatch,
    cpus: int,
    processes: int,
    per_process: int,
    effective_inference_workers: int,
    intra_op: int,
) -> None:
    monkeypatch.setattr("app.settings.available_cpus", lambda: cpus)

    settings = Settings(workers=processes)

    assert (settings.processes, settings.cpus_per_process) == (processes, per_process)
    assert (settings.effective_inference_workers, settings.effective_intra_op_threads) == (
        effective_inference_workers,
        intra_op,
    )
    # every process may decode on every CPU; full-size decodes keep the per-process share
    assert (settings.effective_decode_threads, settings.full_size_decodes) == (cpus, per_process)


def test_workers_default_to_the_cpus_of_the_quota(monkeypatch) -> None:
    monkeypatch.setattr("app.settings.available_cpus", lambda: 4)

    assert Settings().processes == 4
    assert (
        Settings(workers=2, inference_workers=3, intra_op_threads=5).effective_intra_op_threads == 5
    )


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_each_openvino_call_may_use_the_whole_quota_whatever_the_processes(
    monkeypatch, processes: int
) -> None:
    monkeypatch.setattr("app.settings.available_cpus", lambda: 4)

    assert Settings(workers=processes).effective_inference_threads == 4
    assert Settings(workers=processes, inference_threads=1).effective_inference_threads == 1
