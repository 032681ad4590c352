"""Which folder holds which split, and the balanced validation split carved from train when the
user's data has none.

Layouts of an image folder (each split folder: one sub-folder per class):
- train/ + val/ + test/: used as they are.
- train/ + test/: the validation split (threshold calibration, model selection) is carved from
  train/, balanced and seeded.
- train/ + val/ (ImageNet's layout): val/ is the only held-out set, so it becomes the test split,
  and the validation split is carved from train/ as above. Thresholds are never calibrated on the
  images the test metrics are computed on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.config import DatasetError

Part = tuple[list[Path], list[int]]
# A carved validation split takes at most this fraction of the smallest class's training images.
CARVE_FRACTION = 0.2


@dataclass(frozen=True)
class Layout:
    """The folders present, and what each split is made of (for metrics.json and the log)."""

    val_folder: bool
    test_folder: bool

    @property
    def carve_val(self) -> bool:
        return not (self.val_folder and self.test_folder)

    @property
    def test_source(self) -> str:
        if self.test_folder:
            return "test/"
        return (
            "val/ (there is no test/ folder: test metrics are on val/, held out from training "
            "and from threshold calibration)"
        )


def detect_layout(root: Path) -> Layout:
    """train/ is required; val/ or test/ (or both) must be there too."""
    if not (root / "train").is_dir():
        raise DatasetError(
            f"{root / 'train'} does not exist; an image folder needs train/ and val/ or test/ "
            "(or all three), each with one sub-folder per class"
        )
    layout = Layout(val_folder=(root / "val").is_dir(), test_folder=(root / "test").is_dir())
    if not (layout.val_folder or layout.test_folder):
        raise DatasetError(
            f"{root} has train/ but neither val/ nor test/; add a held-out test/ (or val/) folder "
            "with one sub-folder per class"
        )
    return layout


def carve_per_class(labels: list[int], num_classes: int, val_per_class: int) -> int:
    """Images per class for a carved validation split: min(val_per_class, a fifth of the
    smallest class), and every class keeps at least one training image."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    smallest = int(counts.min())
    if smallest < 2:
        c = int(counts.argmin())
        raise DatasetError(
            f"class {c} has {smallest} training image(s); a validation split carved from train/ "
            "needs at least 2 per class: add images, or give a val/ and a test/ folder"
        )
    return max(1, min(val_per_class, int(smallest * CARVE_FRACTION)))


def carve_val(train: Part, num_classes: int, per_class: int, seed: int) -> tuple[Part, Part]:
    """(train minus val, val): per_class images of every class, chosen with a seeded shuffle
    within the class; both keep the original order of the files."""
    paths, labels = train
    label_array = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    val_idx: list[int] = []
    for c in range(num_classes):
        members = np.flatnonzero(label_array == c)
        val_idx += rng.permutation(members)[:per_class].tolist()
    in_val = np.zeros(len(paths), dtype=bool)
    in_val[val_idx] = True
    keep = [i for i in range(len(paths)) if not in_val[i]]
    chosen = sorted(val_idx)
    return (
        ([paths[i] for i in keep], [labels[i] for i in keep]),
        ([paths[i] for i in chosen], [labels[i] for i in chosen]),
    )
