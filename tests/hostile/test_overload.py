"""Overload: ~4x capacity for 30 s. The service sheds with 503 + Retry-After, answers every
accepted request, keeps its memory bounded, and serves normally afterwards."""

import asyncio
import re
import time
from pathlib import Path

import httpx
import keras
import pytest

from tests.conftest import LABELS, add_int8, image_bytes
from tests.servers import start_server, wait_until_healthy

OVERLOAD_FACTOR = 4
OVERLOAD_SECONDS = 30
IMAGES_PER_REQUEST = 16


def export_heavy_model(version_dir: Path) -> Path:
    """~300 MFLOP per image, so inference (not HTTP) is the bottleneck, as in production."""
    from training.export import export_model

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(128, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(128, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(len(LABELS), activation="softmax"),
        ]
    )
    export_model(model, version_dir, labels=LABELS, metadata={"name": "heavy", "version": 1})
    return add_int8(version_dir)


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


async def closed_loop_rps(client: httpx.AsyncClient, files: list, seconds: float) -> float:
    done = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            assert (await client.post("/predict", files=files)).status_code == 200
            done += 1

    await asyncio.gather(*(worker() for _ in range(4)))
    return done / seconds


@pytest.mark.anyio
async def test_four_times_capacity_is_shed_cleanly(tmp_path: Path) -> None:
    model_dir = export_heavy_model(tmp_path / "heavy" / "1")
    server, port = start_server(
        model_dir,
        MAX_IMAGES_PER_REQUEST="16",
        MAX_BATCH_SIZE="64",
        MAX_QUEUE_IMAGES="64",
        REQUEST_TIMEOUT_S="20",
    )
    files = [("files", (f"{i}.png", image_bytes(seed=i))) for i in range(IMAGES_PER_REQUEST)]
    limits = httpx.Limits(max_connections=600, max_keepalive_connections=600)
    try:
        wait_until_healthy(port, server)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits
        ) as client:
            capacity = await closed_loop_rps(client, files, seconds=5)
            rss_before = rss_mib(server.pid)
            outcomes: list[httpx.Response] = []
            rss_peak = rss_before

            async def one() -> None:
                outcomes.append(await client.post("/predict", files=files))

            tasks = []
            interval = 1 / (OVERLOAD_FACTOR * capacity)
            start = time.monotonic()
            while time.monotonic() - start < OVERLOAD_SECONDS:
                if sum(not t.done() for t in tasks) < 500:  # bound the test's own memory
                    tasks.append(asyncio.ensure_future(one()))
                rss_peak = max(rss_peak, rss_mib(server.pid))
                await asyncio.sleep(interval)
            await asyncio.gather(*tasks)

            after = [await client.post("/predict", files=files) for _ in range(10)]
            metrics = (await client.get("/metrics")).text
    finally:
        server.terminate()
        server.wait(30)

    statuses = [r.status_code for r in outcomes]
    shed = [r for r in outcomes if r.status_code == 503]
    print(
        f"capacity {capacity:.1f} req/s; sent {len(outcomes)}: {statuses.count(200)} served, "
        f"{len(shed)} shed; RSS {rss_before:.0f} -> peak {rss_peak:.0f} MiB"
    )
    assert set(statuses) <= {200, 503}, {s: statuses.count(s) for s in set(statuses)}
    assert shed and statuses.count(200) > 0
    assert all(r.headers.get("retry-after") == "1" for r in shed)
    assert all(r.json()["error"]["code"] == "overloaded" for r in shed)
    assert rss_peak - rss_before < 500  # MiB: the queue bound holds memory flat
    assert [r.status_code for r in after] == [200] * 10
    assert re.search(r"^batch_queue_images 0\.0$", metrics, re.MULTILINE)
