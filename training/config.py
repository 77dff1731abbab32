"""The run's settings: one frozen dataclass, the only place their defaults are declared.

`python -m training` (training/__main__.py) turns its flags into these fields and declares no
default of its own; a None here means the recipe's value (training/recipe.py). Importing this
module imports no TensorFlow, so the command line parses its flags without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunConfig:
    arch: str = "fast"  # "fast": the airbench94 recipe; "seed": the blog's network
    data: str | None = None  # a dataset (see --data); None: the offline copy, else download
    epochs: int | None = None  # fast: total epochs; seed: plain-data epochs; None: the recipe's
    aug_epochs: int | None = None  # seed only: augmented epochs after the plain ones
    batch_size: int | None = None  # images per step; None: the recipe's
    val_size: int = 5000  # images held out of the end of train for validation (0 allowed)
    seed: int = 0  # random seed of the weights, the shuffle and the augmentation
    precision: str = "auto"  # "auto", "float32", "bfloat16" or "float16" (training.hardware)
    tta: int | str | None = None  # 0, 1, 2 or "auto"; None: the recipe's ("auto")
    name: str = "cifar10"  # the model's name: models/<name>/
    models_dir: Path = Path("models")  # versions go to <this>/<name>/<version>/
    checkpoints_dir: Path = Path("checkpoints")  # per-epoch checkpoints: <this>/<name>/
    resume: bool = False  # continue from the last epoch's checkpoint of an interrupted run
    output_version: int | None = None  # version folder to write; None: highest existing + 1
    limit_train: int | None = None  # development: train on the first N images only
    cluster_wait_s: float = 600.0  # TF_CONFIG runs: how long each worker waits for the others
