"""A version folder appears complete or not at all: the run writes it under a temporary name
and renames it when everything in it is written, so a server watching models/<name>/ never
sees half a version."""

from __future__ import annotations

import shutil
from pathlib import Path

from app.contract import is_version_name


def next_version(model_root: Path) -> int:
    versions = [int(p.name) for p in model_root.glob("*") if p.is_dir() and is_version_name(p.name)]
    return max(versions, default=0) + 1


def reserve(model_root: Path, version: int | None) -> tuple[int, Path, Path]:
    """The version to write (default: the next), its folder, and the emptied temporary folder
    to write it in. A version folder that exists must be empty."""
    version = version or next_version(model_root)
    version_dir = model_root / str(version)
    if version_dir.exists() and any(version_dir.iterdir()):
        raise FileExistsError(f"{version_dir} exists and is not empty")
    partial_dir = model_root / f".{version}.partial"
    shutil.rmtree(partial_dir, ignore_errors=True)
    return version, version_dir, partial_dir


def publish(partial_dir: Path, version_dir: Path) -> None:
    """Rename the complete version into place."""
    if version_dir.exists():
        version_dir.rmdir()  # empty (checked by `reserve`)
    partial_dir.rename(version_dir)
