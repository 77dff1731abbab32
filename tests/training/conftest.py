"""Tiny generated datasets in each on-disk form the training code reads."""

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def random_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    return images, labels


@pytest.fixture(scope="session")
def npz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline layout: train.npz (160 images) and test.npz (40)."""
    directory = tmp_path_factory.mktemp("npz")
    for split, count, seed in (("train", 160, 1), ("test", 40, 2)):
        x, y = random_images(count, seed)
        np.savez_compressed(directory / f"{split}.npz", x=x, y=y)
    return directory


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """One batch in the real cifar-10-python pickle format: CHW rows of 3072 bytes."""
    batch = {
        b"batch_label": path.name.encode(),
        b"labels": [int(label) for label in labels],
        b"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
        b"filenames": [f"{i}.png".encode() for i in range(len(images))],
    }
    with path.open("wb") as handle:
        pickle.dump(batch, handle, protocol=2)


@pytest.fixture(scope="session")
def cifar_batches(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A fake cifar-10-batches-py/ with two training batches of 20 images and a test batch."""
    root = tmp_path_factory.mktemp("batches") / "cifar-10-batches-py"
    root.mkdir()
    arrays = {}
    for name, seed in (("data_batch_1", 3), ("data_batch_2", 4), ("test_batch", 5)):
        x, y = random_images(20, seed)
        write_batch(root / name, x, y)
        arrays[name] = x
    with (root / "batches.meta").open("wb") as handle:
        pickle.dump({b"label_names": [label.encode() for label in LABELS]}, handle, protocol=2)
    return root, arrays


@pytest.fixture(scope="session")
def cifar_tarball(
    cifar_batches: tuple[Path, dict[str, np.ndarray]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root, _ = cifar_batches
    path = tmp_path_factory.mktemp("tarball") / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        archive.add(root, arcname="cifar-10-batches-py")
    return path


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's dataset: 3 classes x 10 images of other sizes and modes (PNG, JPEG, grey)."""
    root = tmp_path_factory.mktemp("folder") / "pets"
    rng = np.random.default_rng(6)
    for label in ("cat", "dog", "fish"):
        (root / label).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            if i % 3 == 0:
                image.convert("L").save(root / label / f"{i}.png")
            elif i % 3 == 1:
                image.save(root / label / f"{i}.jpg", quality=90)
            else:
                image.save(root / label / f"{i}.png")
    (root / "notes.txt").write_text("not a class folder")
    return root
