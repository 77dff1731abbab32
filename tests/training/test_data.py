from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import (
    CIFAR10_LABELS,
    REPO_ROOT,
    display_path,
    load_cifar_batches,
    load_cifar_tarball,
    load_dataset,
    load_image_folder,
    load_npz,
    split_validation,
)


def test_labels_are_cifar10_in_dataset_order() -> None:
    assert CIFAR10_LABELS == (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    )  # fmt: skip


def test_npz(npz_dir: Path) -> None:
    data = load_npz(npz_dir)

    with np.load(npz_dir / "train.npz") as train:
        np.testing.assert_array_equal(data.x_train, train["x"])
        np.testing.assert_array_equal(data.y_train, train["y"])
    assert data.x_test.shape == (40, 32, 32, 3) and data.x_test.dtype == np.uint8
    assert data.labels == CIFAR10_LABELS and data.source == f"npz {npz_dir.name}"


def test_sources_name_no_absolute_path() -> None:
    """metadata.json is published with the model (and served at /model): the data's place is
    named relative to the folder holding the repository, never by a machine's absolute path."""
    inside = REPO_ROOT.parent / "shared" / "data" / "cifar10"

    assert display_path(inside) == "shared/data/cifar10"
    assert display_path(Path("/somewhere/else/cifar10")) == "cifar10"


def test_cifar_batches_decode_chw_rows_to_hwc_images(cifar_batches) -> None:
    root, arrays = cifar_batches
    data = load_cifar_batches(root)

    expected = np.concatenate([arrays["data_batch_1"], arrays["data_batch_2"]])
    np.testing.assert_array_equal(data.x_train, expected)
    np.testing.assert_array_equal(data.x_test, arrays["test_batch"])
    assert data.y_train.tolist() == [i % 10 for i in range(20)] * 2
    assert data.labels == CIFAR10_LABELS


def test_cifar_tarball_equals_extracted_folder(cifar_batches, cifar_tarball: Path) -> None:
    root, _ = cifar_batches
    extracted, packed = load_cifar_batches(root), load_cifar_tarball(cifar_tarball)

    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(packed, name), getattr(extracted, name))


def test_image_folder_labels_from_folder_names(image_folder: Path) -> None:
    data = load_image_folder(image_folder, test_fraction=0.2, seed=0)

    assert data.labels == ("cat", "dog", "fish")
    assert data.x_train.shape == (24, 32, 32, 3) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (6, 32, 32, 3)
    assert np.bincount(data.y_test).tolist() == [2, 2, 2]  # held out per class
    assert data.name == "pets"


def test_image_folder_with_train_and_test_splits(image_folder: Path, tmp_path: Path) -> None:
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
            for source in sorted((image_folder / label).glob("*.png"))[:3]:
                (tmp_path / split / label / source.name).write_bytes(source.read_bytes())

    data = load_image_folder(tmp_path)

    assert data.labels == ("cat", "dog")
    assert len(data.x_train) == len(data.x_test) == 6


def test_load_dataset_recognises_each_form(
    npz_dir: Path, cifar_batches, cifar_tarball: Path, image_folder: Path
) -> None:
    root, _ = cifar_batches
    assert load_dataset(str(npz_dir)).source.startswith("npz")
    assert load_dataset(str(root)).source.startswith("cifar-10-batches-py")
    assert load_dataset(str(root.parent)).source.startswith("cifar-10-batches-py")
    assert load_dataset(str(cifar_tarball)).source.startswith("cifar-10-python.tar.gz")
    assert load_dataset(str(image_folder)).source.startswith("image folder")
    with pytest.raises(FileNotFoundError):
        load_dataset(str(npz_dir / "missing"))


def test_validation_is_the_tail_of_train() -> None:
    x = np.arange(10)[:, None, None, None].repeat(3, axis=-1).astype(np.uint8)
    split = split_validation(x, np.arange(10), 3)

    assert split.y_train.tolist() == list(range(7)) and split.y_val.tolist() == [7, 8, 9]
    assert len(split_validation(x, np.arange(10), 0).x_val) == 0
    with pytest.raises(ValueError):
        split_validation(x, np.arange(10), 10)


def test_image_folder_pixels_equal_what_the_service_decodes(tmp_path: Path) -> None:
    """No train/serve skew: the same files through training's loader and through POST
    /predict's preprocessing give the same arrays, byte for byte, for the cases where naive
    loading differs (EXIF rotation, transparency, a non-square photo, a 16-bit grey PNG)."""
    from app.preprocessing import decode_image

    rng = np.random.default_rng(7)
    folder = tmp_path / "user" / "things"
    folder.mkdir(parents=True)
    photo = Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    photo.save(folder / "a_rotated.jpg", exif=exif, quality=90)
    rgba = rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "b_transparent.png")
    photo.save(folder / "c_wide.png")
    grey16 = rng.integers(0, 65536, (50, 50), dtype=np.uint16)
    Image.fromarray(grey16).save(folder / "d_grey16.png")
    files = sorted(folder.iterdir())

    data = load_image_folder(tmp_path / "user", test_fraction=0.0)

    served = np.stack([decode_image(f.read_bytes(), max_pixels=10**8) for f in files])
    np.testing.assert_array_equal(data.x_train, served)
    naive = np.asarray(Image.open(files[0]).convert("RGB").resize((32, 32)))
    assert not np.array_equal(data.x_train[0], naive)  # the rotation is applied, not ignored
