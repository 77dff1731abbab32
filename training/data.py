"""Datasets as uint8 arrays: CIFAR-10 from any of its usual forms, or a folder of class folders.

Every loader returns the same `Dataset`: images uint8 (N, H, W, 3) RGB, labels uint8 (N,), the
label names in index order and a one-line description of where the data came from (printed on
the run's first line and kept in metadata.json).
"""

from __future__ import annotations

import pickle
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CIFAR10_LABELS: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
MAX_PIXELS = 200_000_000  # per image of a user's folder: only a guard against absurd headers
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
REPO_ROOT = Path(__file__).resolve().parent.parent
# Where the offline copy lives relative to the repository (and to the working directory).
OFFLINE_CANDIDATES = (REPO_ROOT.parent / "shared/data/cifar10", Path("../shared/data/cifar10"))


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: tuple[str, ...]
    source: str
    name: str = "cifar10"


@dataclass(frozen=True)
class Split:
    """Train minus the held-out validation tail: validation tunes, test is only for the report."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def split_validation(x: np.ndarray, y: np.ndarray, val_size: int) -> Split:
    """Hold out the last `val_size` images: fixed, so every run validates on the same images."""
    if not 0 <= val_size < len(x):
        raise ValueError(f"val_size must be in [0, {len(x) - 1}], got {val_size}")
    cut = len(x) - val_size
    return Split(x[:cut], y[:cut], x[cut:], y[cut:])


def load_npz(directory: Path) -> Dataset:
    """The offline copy: train.npz and test.npz, each with `x` uint8 (N,32,32,3) and `y` uint8."""
    directory = Path(directory)
    arrays = []
    for split in ("train", "test"):
        with np.load(directory / f"{split}.npz") as data:
            arrays += [_images(data["x"]), _labels(data["y"])]
    return Dataset(*arrays, labels=CIFAR10_LABELS, source=f"npz {display_path(directory)}")


def load_cifar_batches(directory: Path) -> Dataset:
    """An extracted `cifar-10-batches-py/`: pickled dicts of `data` (N, 3072 CHW) and `labels`."""
    directory = Path(directory)
    if (directory / "cifar-10-batches-py").is_dir():
        directory = directory / "cifar-10-batches-py"
    train_files = sorted(directory.glob("data_batch_*"), key=_batch_number)
    if not train_files or not (directory / "test_batch").is_file():
        raise FileNotFoundError(f"no data_batch_* and test_batch in {directory}")
    train = [_read_batch(path.read_bytes()) for path in train_files]
    test = _read_batch((directory / "test_batch").read_bytes())
    labels = _batch_label_names(directory / "batches.meta")
    x_train, y_train = _concat(train)
    return Dataset(
        x_train,
        y_train,
        *test,
        labels=labels,
        source=f"cifar-10-batches-py {display_path(directory)}",
    )


def load_cifar_tarball(path: Path) -> Dataset:
    """The canonical `cifar-10-python.tar.gz`, read in memory without extracting it."""
    path = Path(path)
    train: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    test = None
    labels = CIFAR10_LABELS
    with tarfile.open(path, "r:*") as archive:
        for member in archive.getmembers():
            name = Path(member.name).name
            if not member.isfile():
                continue
            if name.startswith("data_batch_"):
                train[_batch_number(Path(name))] = _read_batch(_member_bytes(archive, member))
            elif name == "test_batch":
                test = _read_batch(_member_bytes(archive, member))
            elif name == "batches.meta":
                labels = _label_names(_member_bytes(archive, member))
    if not train or test is None:
        raise FileNotFoundError(f"no data_batch_* and test_batch in {path}")
    x_train, y_train = _concat(train[k] for k in sorted(train))
    return Dataset(
        x_train,
        y_train,
        *test,
        labels=labels,
        source=f"cifar-10-python.tar.gz {display_path(path)}",
    )


def load_keras() -> Dataset:
    """`keras.datasets.cifar10`: downloads (about 170 MB) unless Keras has it cached."""
    import keras

    (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    return Dataset(
        _images(x_train),
        _labels(y_train),
        _images(x_test),
        _labels(y_test),
        labels=CIFAR10_LABELS,
        source="keras.datasets.cifar10",
    )


def load_image_folder(
    directory: Path,
    *,
    size: int = 32,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """A user's dataset: one subfolder of images per class, label names from the folder names.

    With `train/` and `test/` subfolders (each holding the class folders) those are the splits;
    otherwise a seeded `test_fraction` of each class is held out as the test set. Images go
    through the service's preprocessing (`app.preprocessing.decode_image`) to size x size.
    """
    directory = Path(directory)
    if (directory / "train").is_dir() and (directory / "test").is_dir():
        labels = _class_names(directory / "train")
        x_train, y_train = _read_class_folders(directory / "train", labels, size)
        x_test, y_test = _read_class_folders(directory / "test", labels, size)
    else:
        labels = _class_names(directory)
        x, y = _read_class_folders(directory, labels, size)
        rng = np.random.default_rng(seed)
        test_mask = np.zeros(len(y), bool)
        for label in range(len(labels)):
            members = np.flatnonzero(y == label)
            count = round(len(members) * test_fraction)
            test_mask[rng.choice(members, count, replace=False)] = True
        x_train, y_train, x_test, y_test = x[~test_mask], y[~test_mask], x[test_mask], y[test_mask]
    return Dataset(
        x_train,
        y_train,
        x_test,
        y_test,
        labels=tuple(labels),
        source=f"image folder {display_path(directory)}",
        name=directory.name,
    )


def display_path(path: Path) -> str:
    """A data path as metadata.json keeps it, never a machine's absolute path: relative to this
    repository, or `shared/...` for the offline copy beside it, else just the folder's name."""
    path = Path(path).resolve()
    for base, prefix in ((REPO_ROOT, ""), (REPO_ROOT.parent / "shared", "shared/")):
        base = base.resolve()
        if path.is_relative_to(base):
            return f"{prefix}{path.relative_to(base).as_posix()}"
    return path.name


def find_offline_copy() -> Path | None:
    for candidate in OFFLINE_CANDIDATES:
        if (candidate / "train.npz").is_file() and (candidate / "test.npz").is_file():
            return candidate.resolve()
    return None


def load_dataset(data: str | None) -> Dataset:
    """Resolve `--data`: None finds the offline copy, else downloads; "keras" forces the download;
    a path is recognised by its contents (npz pair, batches folder, tarball or class folders)."""
    if data is None:
        offline = find_offline_copy()
        return load_npz(offline) if offline is not None else load_keras()
    if data == "keras":
        return load_keras()
    path = Path(data)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        return load_cifar_tarball(path)
    if not path.is_dir():
        raise FileNotFoundError(f"--data {data}: no such file or directory")
    if (path / "train.npz").is_file():
        return load_npz(path)
    if any(path.glob("data_batch_*")) or (path / "cifar-10-batches-py").is_dir():
        return load_cifar_batches(path)
    tarballs = sorted(path.glob("cifar-10-python.tar.gz"))
    if tarballs:
        return load_cifar_tarball(tarballs[0])
    return load_image_folder(path)


def _images(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {x.dtype} {x.shape}")
    return x


def _labels(y: np.ndarray) -> np.ndarray:
    return np.asarray(y).reshape(-1).astype(np.uint8)


def _batch_number(path: Path) -> int:
    return int(path.name.rsplit("_", 1)[-1])


def _read_batch(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = pickle.loads(raw, encoding="bytes")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), _labels(batch[b"labels"])


def _label_names(raw: bytes) -> tuple[str, ...]:
    meta = pickle.loads(raw, encoding="bytes")
    return tuple(name.decode() for name in meta[b"label_names"])


def _batch_label_names(path: Path) -> tuple[str, ...]:
    return _label_names(path.read_bytes()) if path.is_file() else CIFAR10_LABELS


def _member_bytes(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    if handle is None:
        raise OSError(f"cannot read {member.name}")
    return handle.read()


def _concat(parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*parts, strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def _class_names(directory: Path) -> list[str]:
    names = sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise FileNotFoundError(f"no class subfolders in {directory}")
    return names


def _read_class_folders(
    directory: Path, labels: list[str], size: int
) -> tuple[np.ndarray, np.ndarray]:
    # The service's own preprocessing (EXIF orientation, alpha over white, box resize of the
    # whole frame): a model trained on these arrays sees what it will be served.
    from app.preprocessing import ImageRejected, decode_image

    images, targets = [], []
    for index, label in enumerate(labels):
        folder = directory / label
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files:
            try:
                images.append(decode_image(path.read_bytes(), max_pixels=MAX_PIXELS, size=size))
            except ImageRejected as exc:
                raise ValueError(f"{path}: {exc}") from None
            targets.append(index)
    if not images:
        raise FileNotFoundError(f"no images in the class folders of {directory}")
    return np.stack(images), np.asarray(targets, dtype=np.uint8)
