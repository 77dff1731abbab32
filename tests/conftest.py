"""Shared fixtures: a small real SavedModel exported by the training code, and app clients.

`python -m pytest --precision f32|bf16|int8` runs the serving tests under that precision (default
auto: whatever this CPU's rule picks). It sets INFERENCE_PRECISION for every app the tests start,
in-process or as `python -m app`; tests that load a model themselves read it from `precision()`.
Every other setting's environment variable is cleared at start: the shell's do not leak in.
"""

import asyncio
import io
import json
import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PRECISIONS = ("auto", "f32", "bf16", "int8")
LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="INFERENCE_PRECISION for every app and model the tests serve (default auto)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """The service's settings come from the tests alone: a WORKERS or API_KEY in the shell must
    not change what the tests start (the apps in-process and `python -m app` alike)."""
    from app.settings import Settings

    for name in Settings.model_fields:
        os.environ.pop(name.upper(), None)
    # Set here, not per test: subprocess servers and Settings() both read the environment.
    os.environ["INFERENCE_PRECISION"] = config.getoption("--precision")
    # No gRPC unless a test gives its server a port: every server would bind 8001.
    os.environ["GRPC_PORT"] = "0"


def precision() -> str:
    """The precision this test run serves in (--precision): pass it to a direct model load."""
    return os.environ.get("INFERENCE_PRECISION", "auto")


def assert_served_like(got: np.ndarray, expected: np.ndarray, served_precision: str) -> None:
    """Served probabilities against TensorFlow's float32 ones, within the tolerance the app itself
    allows `served_precision` (app.golden: the same rule as the golden check at load)."""
    from app.golden import compare

    result = compare(
        np.asarray(got, np.float32), np.asarray(expected, np.float32), served_precision
    )
    assert result.passed, f"{served_precision}: {result}"


def export_tiny_model(version_dir: Path, *, name: str = "cifar10", version: int = 1) -> Path:
    """A few-hundred-parameter CNN, untrained but deterministic, exported to the contract."""
    import keras

    from training.export import export_model

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(len(LABELS), activation="softmax"),
        ]
    )
    metadata = {
        "name": name,
        "version": version,
        "architecture": {"name": "tiny-test-cnn"},
        "dataset": {"name": "none"},
        "metrics": {"test_accuracy": None, "val_accuracy": None, "per_class_accuracy": {}},
    }
    export_model(model, version_dir, labels=LABELS, metadata=metadata)
    return add_int8(version_dir)


def add_int8(version_dir: Path) -> Path:
    """The version's INT8 model, as every training export has, so that --precision int8 can
    serve test models too (calibrated on random images: they are untrained)."""
    from training.quantize import quantize

    quantize(version_dir, np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3), np.uint8))
    return version_dir


def break_version(version_dir: Path) -> Path:
    """Corrupt what every precision reads: the SavedModel and the INT8 model."""
    from app.contract import INT8_MODEL

    (version_dir / "saved_model.pb").write_bytes(b"\x00not a protobuf\xff" * 10)
    (version_dir / INT8_MODEL).write_text("<not a model")
    return version_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/<name>/ layout with one version, so version resolution is exercised too."""
    root = tmp_path_factory.mktemp("models") / "cifar10"
    export_tiny_model(root / "1")
    return root


@pytest.fixture
def make_client(tiny_model_dir: Path) -> Iterator[Callable[..., Any]]:
    """Start the real app (lifespan included) with settings overrides; closes what it opened."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        overrides.setdefault("model_dir", tiny_model_dir)
        client = TestClient(create_app(Settings(**overrides)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def shipped_client() -> Iterator[Any]:
    """The committed model (models/cifar10, its highest version) served in-process, one per
    test module: only a trained model gets real images right."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    settings = Settings(model_dir=REPO / "models" / "cifar10")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def client(make_client: Callable[..., Any]) -> Any:
    return make_client()


def image_bytes(
    fmt: str = "PNG",
    size: tuple[int, int] = (32, 32),
    mode: str = "RGB",
    seed: int = 0,
    **save: Any,
) -> bytes:
    """An image of random pixels in the given format and mode."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def png_of(pixels: np.ndarray) -> bytes:
    """`pixels` (H, W, 3) uint8 as a lossless PNG: the service decodes exactly these pixels."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def binary_infer_body(shape: list[int], datatype: str, raw: bytes) -> tuple[bytes, dict[str, str]]:
    """A /v2 infer body with the binary tensor data extension (the JSON header, then `raw`)
    and the header that says where the JSON ends."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": shape,
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def bytes_elements(items: list[bytes]) -> bytes:
    """BYTES tensor data: each element as its 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def tiff_with_strips(strips: int) -> bytes:
    """A 32x32 grey TIFF whose directory lists `strips` strips (all the same row)."""
    pixels = bytes(32 * 32)
    offsets_at = 8 + len(pixels)
    counts_at = offsets_at + 4 * strips
    directory_at = counts_at + 4 * strips
    entries = [
        (256, 3, 1, 32),
        (257, 3, 1, 32),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, strips, offsets_at),
        (278, 3, 1, 1),
        (279, 4, strips, counts_at),
    ]
    directory = struct.pack("<H", len(entries))
    directory += b"".join(struct.pack("<HHII", *entry) for entry in entries) + bytes(4)
    return (
        b"II*\x00"
        + struct.pack("<I", directory_at)
        + pixels
        + np.full(strips, 8, "<u4").tobytes()
        + np.ones(strips, "<u4").tobytes()
        + directory
    )


def tiff_directory(layout: str, tag: int, count: int) -> bytes:
    """A TIFF whose first directory has two entries, ImageWidth then `tag` with `count` values
    (and no data behind them)."""
    order = "<" if layout.startswith("II") else ">"
    magic = {"II": b"II*\x00", "MM": b"MM\x00*", "II+": b"II+\x00", "MM+": b"MM\x00+"}[layout]
    if layout.endswith("+"):  # BigTIFF: 8-byte offsets and counts, 20-byte entries
        header = magic + struct.pack(order + "HHQ", 8, 0, 16)
        directory = struct.pack(order + "QHHQQHHQQ", 2, 256, 4, 1, 32, tag, 16, count, 0)
    else:
        header = magic + struct.pack(order + "I", 8)
        directory = struct.pack(order + "HHHIIHHII", 2, 256, 4, 1, 32, tag, 4, count, 0)
    return header + directory + bytes(8)


async def until(condition: Callable[[], bool], failure: str, seconds: float = 30) -> None:
    """Poll `condition` on the event loop; fail with `failure` after a generous deadline."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, failure
        await asyncio.sleep(0.001)
