"""Model versions while serving: new ones swapped in, broken ones refused, old ones unloaded
after their requests, and not one request failed on the way."""

import json
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.main import create_app
from app.repository import ServedVersion
from app.settings import Settings
from tests.conftest import break_version, export_tiny_model, image_bytes, until
from tests.servers import http_get, serving

pytestmark = pytest.mark.anyio


def publish(model_dir: Path, version: int) -> None:
    """Deploy a version the documented way: write under a temporary name, rename into place."""
    partial = model_dir / f".{version}.partial"
    export_tiny_model(partial, version=version)
    partial.rename(model_dir / str(version))


def publish_broken(model_dir: Path, version: int) -> None:
    partial = model_dir / f".{version}.partial"
    shutil.copytree(model_dir / "1", partial)
    break_version(partial)
    metadata = json.loads((partial / "metadata.json").read_text())
    (partial / "metadata.json").write_text(json.dumps(metadata | {"version": version}))
    partial.rename(model_dir / str(version))


class SteadyLoad:
    """Threads posting /predict without pause; records every answer's status and version."""

    def __init__(self, port: int, threads: int = 4) -> None:
        self.url = f"http://127.0.0.1:{port}/predict"
        self.answers: list[tuple[int, int | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(self.url, files={"files": ("x.png", image_bytes())})
                    version = response.json().get("version") if response.is_success else None
                    self.answers.append((response.status_code, version))
                except httpx.HTTPError:
                    self.answers.append((0, None))

    def versions_since(self, start: int) -> Counter[int | None]:
        return Counter(version for _, version in self.answers[start:])

    def wait_for_version(self, version: int, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if any(v == version for _, v in self.answers[-8:]):
                return
            time.sleep(0.05)
        raise AssertionError(f"version {version} never answered: {self.versions_since(0)}")

    def wait_for_answers(self, count: int, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while len(self.answers) < count:
            assert time.monotonic() < deadline, f"{len(self.answers)} answers, not {count}"
            time.sleep(0.05)

    @contextmanager
    def running(self) -> Iterator["SteadyLoad"]:
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(60)


def get(port: int, path: str) -> tuple[int, str]:
    status, body = http_get(port, path)
    return status, body.decode()


def metric(port: int, name: str) -> float:
    _, text = get(port, "/metrics")
    lines = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_new_and_broken_versions_under_load_fail_no_request(tmp_path: Path) -> None:
    model_dir = tmp_path / "cifar10"
    export_tiny_model(model_dir / "1", version=1)
    with serving(model_dir, MODEL_POLL_S="0.2") as port, SteadyLoad(port).running() as load:
        load.wait_for_version(1)

        publish(model_dir, 2)
        load.wait_for_version(2)
        swapped = len(load.answers)
        load.wait_for_answers(swapped + 24)
        # Once swapped, only the new version answers (latest:1), but for the few requests
        # (one per thread) that held the old one when the swap happened.
        assert set(load.versions_since(swapped + 4)) == {2}, load.versions_since(swapped)

        publish_broken(model_dir, 3)
        refused = 'model_version_events_total{event="refused"}'
        deadline = time.monotonic() + 60
        while metric(port, refused) < 1:
            assert time.monotonic() < deadline, "the broken version was never looked at"
            time.sleep(0.1)
        after_refusal = len(load.answers)
        load.wait_for_answers(after_refusal + 24)
        health_status, health = get(port, "/health")

    assert health_status == 200 and json.loads(health)["version"] == 2
    assert set(load.versions_since(after_refusal)) == {2}
    statuses = Counter(status for status, _ in load.answers)
    assert set(statuses) == {200}, statuses


@asynccontextmanager
async def running(model_dir: Path, **settings: Any) -> AsyncIterator[tuple[Any, Any]]:
    """The app over its own model folder, polled only when the test says."""
    app = create_app(Settings(model_dir=model_dir, model_poll_s=0, **settings))
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        app.router.lifespan_context(app),
    ):
        yield app.state.repository, client


def blank(served: ServedVersion) -> np.ndarray:
    return np.zeros((1, served.classifier.height, served.classifier.width, 3), np.uint8)


async def test_a_removed_version_is_unloaded_only_after_its_requests(tmp_path: Path) -> None:
    model_dir = tmp_path / "cifar10"
    for version in (1, 2):
        export_tiny_model(model_dir / str(version), version=version)
    async with running(model_dir, model_version_policy="latest:2") as (repository, client):
        assert repository.versions == [2, 1]
        pinned = (await client.post("/predict?version=1", files={"files": image_bytes()})).json()
        assert pinned["version"] == 1

        old = repository.acquire(1)  # two requests still holding version 1
        assert repository.acquire(1) is old
        shutil.rmtree(model_dir / "1")
        await repository.poll()
        repository.release(old)  # one of them is done; the other still holds it

        assert repository.versions == [2]
        gone = await client.post("/predict?version=1", files={"files": image_bytes()})
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "version_not_found"
        # It names the version asked for and the ones a client may ask for instead.
        assert re.search(r"\b1\b.*\[2\]", gone.json()["error"]["message"])
        assert not old.batcher.closed  # still serving the request that holds it
        answer = await old.batcher.submit(blank(old))
        assert answer.shape == (1, 10)

        repository.release(old)
        await until(lambda: old.batcher.closed, "the removed version was never unloaded")
        metrics = (await client.get("/metrics")).text
        assert 'model_version_events_total{event="unloaded"} 1.0' in metrics
        assert 'model_version_loaded{version="1"}' not in metrics


async def test_the_policy_decides_which_versions_serve(tmp_path: Path) -> None:
    model_dir = tmp_path / "cifar10"
    for version in (1, 2, 3):
        export_tiny_model(model_dir / str(version), version=version)
    # Servable models in folders that are not versions, though str.isdigit() says so:
    # Arabic-Indic 11 (int() reads 11, the highest) and superscript 2 (int() raises).
    export_tiny_model(model_dir / "\u0661\u0661", version=11)
    export_tiny_model(model_dir / "\u00b2", version=2)

    async with running(model_dir, model_version_policy="specific:1,3") as (repository, client):
        assert repository.versions == [3, 1]
        assert (await client.post("/predict", files={"files": image_bytes()})).json()[
            "version"
        ] == 3
        for version in (1, 3):
            model = (await client.get(f"/model?version={version}")).json()
            assert model["version"] == version and model["loaded_versions"] == [3, 1]
        assert (await client.get("/model?version=2")).status_code == 404

    async with running(model_dir, model_version_policy="all") as (repository, client):
        assert repository.versions == [3, 2, 1]
        assert 'event="refused"' not in (await client.get("/metrics")).text


async def test_a_broken_highest_version_leaves_the_next_one_serving(tmp_path: Path) -> None:
    model_dir = tmp_path / "cifar10"
    export_tiny_model(model_dir / "1", version=1)
    publish_broken(model_dir, 2)
    export_tiny_model(model_dir / "3", version=4)  # metadata disagrees with its folder

    async with running(model_dir) as (repository, client):
        assert repository.versions == [1]
        health = (await client.get("/health")).json()
        metrics = (await client.get("/metrics")).text

    assert health["version"] == 1
    assert 'model_version_events_total{event="refused"} 2.0' in metrics


async def test_a_version_of_another_model_is_refused(tmp_path: Path) -> None:
    """Versions of one folder are one model: a version 2 that names another keeps 1 serving."""
    model_dir = tmp_path / "cifar10"
    export_tiny_model(model_dir / "1", version=1)

    async with running(model_dir) as (repository, client):
        partial = model_dir / ".2.partial"
        export_tiny_model(partial, name="mnist", version=2)
        partial.rename(model_dir / "2")
        events = await repository.poll()
        health = (await client.get("/health")).json()

    [event] = events
    assert (event.kind, event.version) == ("refused", 2)
    assert "names model 'mnist', this repository serves 'cifar10'" in event.reason
    assert (health["model"], health["version"]) == ("cifar10", 1)


async def test_a_refused_version_is_retried_once_its_files_change(tmp_path: Path) -> None:
    model_dir = tmp_path / "cifar10"
    export_tiny_model(model_dir / "1", version=1)
    publish_broken(model_dir, 2)

    async with running(model_dir) as (repository, _):
        assert repository.versions == [1]
        assert await repository.poll() == []  # unchanged: not tried again
        shutil.rmtree(model_dir / "2")
        publish(model_dir, 2)
        events = await repository.poll()

        assert [(event.kind, event.version) for event in events] == [("loaded", 2)]
        assert repository.versions == [2]


async def test_explicit_load_and_unload_through_the_repository_api(tmp_path: Path) -> None:
    model_dir = tmp_path / "cifar10"
    export_tiny_model(model_dir / "1", version=1)

    async with running(model_dir) as (repository, client):
        refused = await client.post("/v2/repository/models/cifar10/unload")
        assert refused.status_code == 403 and "ADMIN_API_KEY" in refused.json()["error"]
        assert repository.versions == [1]

    async with running(model_dir, admin_api_key="k") as (repository, client):
        client.headers["X-API-Key"] = "k"
        publish(model_dir, 2)
        assert repository.versions == [1]  # polling is off
        loaded = await client.post("/v2/repository/models/cifar10/load")
        assert loaded.status_code == 200 and repository.versions == [2]

        unloaded = await client.post("/v2/repository/models/cifar10/unload")
        assert unloaded.status_code == 200
        for probe in ("/health", "/v2/health/ready"):  # nothing loaded: not ready, not a 500
            assert (await client.get(probe)).status_code == 503, probe
        assert (await client.get("/v2/models/cifar10/ready")).status_code == 503
        refused = await client.post("/predict", files={"files": image_bytes()})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"

        assert (await client.post("/v2/repository/models/cifar10/load")).status_code == 200
        assert (await client.get("/v2/models/cifar10/versions/2/ready")).status_code == 200
        assert (await client.post("/v2/repository/models/mnist/load")).status_code == 404


async def test_a_folder_that_empties_keeps_its_last_version_serving(tmp_path: Path) -> None:
    """Nothing servable left (removed, or a half-finished copy): keep serving, never go dark."""
    model_dir = tmp_path / "cifar10"
    export_tiny_model(model_dir / "1", version=1)

    async with running(model_dir) as (repository, client):
        shutil.rmtree(model_dir / "1")
        events = await repository.poll()
        versions = repository.versions
        predicted = await client.post("/predict", files={"files": image_bytes()})

    assert events == [] and versions == [1]
    assert predicted.status_code == 200 and predicted.json()["version"] == 1


async def test_close_waits_for_a_poll_that_is_loading(tmp_path: Path) -> None:
    """Shutdown during a poll that is loading version 2: version 2's batcher must not outlive
    the close (it would if close emptied the repository beside the poll)."""
    import asyncio

    from app.batcher import Batcher
    from app.model import load_classifier
    from app.repository import ModelRepository
    from app.version_policy import VersionPolicy

    model_dir = tmp_path / "cifar10"
    export_tiny_model(model_dir / "1", version=1)
    loading, proceed = threading.Event(), threading.Event()
    batchers: list[Batcher] = []

    def load(path: Path):
        if path.name == "2":
            loading.set()
            assert proceed.wait(60), "never let through"
        return load_classifier(path, precision="f32")

    def make_batcher(classifier) -> Batcher:
        batchers.append(
            Batcher(classifier.predict, max_batch_size=8, max_batch_delay_ms=0, max_queue_images=8)
        )
        return batchers[-1]

    repository = ModelRepository(
        model_dir, policy=VersionPolicy.parse("latest:1"), load=load, make_batcher=make_batcher
    )
    await repository.start()
    publish(model_dir, 2)
    polling = asyncio.ensure_future(repository.poll())
    assert await asyncio.to_thread(loading.wait, 60), "version 2 never started loading"
    closing = asyncio.ensure_future(repository.close())
    # Time for a close that ignored the poll to finish (nothing to wait on for what must not
    # happen); a close that waits for the poll is still pending after it.
    await asyncio.sleep(0.05)
    assert not closing.done()
    proceed.set()
    await asyncio.gather(polling, closing)

    assert repository.versions == []
    assert len(batchers) == 2 and all(batcher.closed for batcher in batchers)
