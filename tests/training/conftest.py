"""Fixtures: a tiny generated image folder (root/{train,val,test}/<class>/*.png)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TRAIN_COUNTS = (16, 8, 4)  # long-tailed
EVAL_PER_CLASS = 4
SIZE = 12


def _image(label: int, rng: np.random.Generator) -> Image.Image:
    """Noise plus a bright square whose corner depends on the class: learnable, not trivial."""
    x = rng.integers(0, 80, size=(SIZE, SIZE), dtype=np.uint8)
    r, c = divmod(label, 2)
    x[r * 6 : r * 6 + 6, c * 6 : c * 6 + 6] += 150
    return Image.fromarray(x, mode="L")


def write_image_folder(
    root: Path, seed: int = 0, splits: tuple[str, ...] = ("train", "val", "test")
) -> Path:
    rng = np.random.default_rng(seed)
    for split in splits:
        for label, n_train in enumerate(TRAIN_COUNTS):
            d = root / split / f"class{label}"
            d.mkdir(parents=True)
            n = n_train if split == "train" else EVAL_PER_CLASS
            for i in range(n):
                _image(label, rng).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("folder"))


def tiny_args(root: Path, out: Path, *extra: str) -> list[str]:
    """elf-train arguments for a fast run on the generated folder."""
    return [
        "--dataset", "folder", "--data-root", str(root), "--channels", "1",
        "--arch", "resnet8", "--width-mult", "0.5", "--batch-size", "8",
        "--eval-batch-size", "16", "--threads", "1", "--no-progress", "--out", str(out),
        "--log-level", "WARNING", *extra,
    ]  # fmt: skip
