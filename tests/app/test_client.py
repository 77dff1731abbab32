"""`cifar10 classify`: a folder against a live `python -m app`, a server that sheds load, and
in-process with `--model`."""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LABELS, REPO, image_bytes
from tests.servers import http_get, serving


def run_client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.client", "classify", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 files in two subfolders: 298 PNGs, a text file and a truncated PNG."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(298):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        (sub / f"{i:03d}.png").write_bytes(image_bytes(seed=i))
    (root / "a" / "notes.txt").write_text("a shopping list, not a picture\n")
    (root / "b" / "cut.png").write_bytes(image_bytes(seed=1)[:60])
    return root


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_a_folder_is_classified_past_its_bad_files(tiny_model_dir: Path, folder: Path) -> None:
    with serving(tiny_model_dir) as port:
        result = run_client(str(folder), "--url", f"http://127.0.0.1:{port}")

    assert result.returncode == 1, result.stderr[-2000:]  # not every file was classified
    answered = rows(result.stdout)
    assert len(answered) == 298
    assert {row["path"] for row in answered} == {
        str(p) for p in folder.rglob("*.png") if p.name != "cut.png"
    }
    assert all(row["label"] in LABELS and row["version"] == "1" for row in answered)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert any("notes.txt" in line for line in errors)
    assert any("cut.png" in line for line in errors)

    offline = run_client(str(folder), "--model", str(tiny_model_dir), "--format", "jsonl")
    assert offline.returncode == 1
    local = {
        answer["path"]: answer["label"] for answer in map(json.loads, offline.stdout.splitlines())
    }
    assert local == {row["path"]: row["label"] for row in answered}  # same decoding and model


def test_a_server_that_sheds_load_gets_every_image_after_retries(
    tiny_model_dir: Path, folder: Path, tmp_path: Path
) -> None:
    images = sorted((folder / "a").glob("*.png"))[:96]
    out = tmp_path / "rows.csv"
    # Room for two 16-image bodies at once (each ~55 kB): of six sent together, the others
    # are shed at once, whatever this CPU's speed (a full batcher queue alone depends on it).
    shedding = {"MAX_UPLOAD_BYTES": str(64 * 1024), "MAX_UPLOAD_BYTES_IN_FLIGHT": str(128 * 1024)}
    with serving(
        tiny_model_dir,
        MAX_QUEUE_IMAGES="16",
        MAX_BATCH_SIZE="16",
        MAX_IMAGES_PER_REQUEST="16",
        **shedding,
    ) as port:
        url = f"http://127.0.0.1:{port}"
        result = run_client(
            *map(str, images), "--url", url, "--batch", "16", "--concurrency", "6", "-o", str(out)
        )
        metrics = http_get(port, "/metrics")[1].decode()

    assert result.returncode == 0, result.stderr[-2000:]
    assert len(rows(out.read_text())) == 96
    assert 'status="503"' in metrics  # it was shed, and the client came back


def test_requests_larger_than_the_server_takes_are_split(
    tiny_model_dir: Path, folder: Path
) -> None:
    images = sorted((folder / "b").glob("*.png"))[:40]
    with serving(tiny_model_dir, MAX_IMAGES_PER_REQUEST="8") as port:
        result = run_client(*map(str, images), "--url", f"http://127.0.0.1:{port}", "--batch", "40")

    assert result.returncode == 0, result.stderr[-2000:]
    assert [row["path"] for row in rows(result.stdout)] == [str(p) for p in images]
