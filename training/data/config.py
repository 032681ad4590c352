"""Configuration of the data part: which data set, where it lives, and how the long tail is cut."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DATASETS = ("fashion-mnist-lt", "cifar10-lt", "cifar100-lt", "folder", "list")
DEFAULT_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")

_PATH_FIELDS = ("root", "train_list", "val_list", "test_list", "class_names_file")


@dataclass(frozen=True)
class DataConfig:
    """Everything needed to rebuild the same splits (JSON-able through dataclasses.asdict).

    Strings given for the path fields (e.g. from a checkpoint's JSON config) become Paths.
    """

    dataset: str = "fashion-mnist-lt"
    root: Path | None = None  # None: the Debian package's directory for fashion-mnist
    imbalance_ratio: float = 100.0  # rho = n_max / n_min
    n_max: int = 5000
    val_per_class: int = 200  # balanced validation split from the training images left unused
    seed: int = 0
    # Which class gets which long-tail count: class_order[r] is the class with the r-th largest
    # count (head first). None keeps the data set's own order (class 0 is the head).
    class_order: tuple[int, ...] | None = None
    image_size: int | None = None  # folder/list: resize to image_size x image_size
    channels: int | None = None  # folder/list: 1 (grey) or 3 (RGB); None = 3
    # list data (ImageNet-LT style, `relative/path.jpg label` per line, paths relative to root):
    train_list: Path | None = None
    val_list: Path | None = None
    test_list: Path | None = None
    class_names_file: Path | None = None  # optional, one class name per line (line i = label i)
    # folder/list data are decoded lazily, so mean/std come from a seeded sample of this size
    stats_max_images: int = 5000

    def __post_init__(self) -> None:
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Path(value))
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; expected one of {DATASETS}")
        if self.imbalance_ratio < 1.0:
            raise ValueError(f"imbalance_ratio must be >= 1, got {self.imbalance_ratio}")
        if self.n_max < 1:
            raise ValueError(f"n_max must be >= 1, got {self.n_max}")
        if self.val_per_class < 1:
            raise ValueError(f"val_per_class must be >= 1, got {self.val_per_class}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.class_order is not None:
            object.__setattr__(self, "class_order", tuple(int(c) for c in self.class_order))
            if sorted(self.class_order) != list(range(len(self.class_order))):
                raise ValueError(
                    f"class_order must be a permutation of 0..C-1, got {list(self.class_order)}"
                )
            if self.dataset in ("folder", "list"):
                raise ValueError("class_order orders a built long tail; folder/list data have none")
        if self.stats_max_images < 1:
            raise ValueError(f"stats_max_images must be >= 1, got {self.stats_max_images}")


class DatasetError(ValueError):
    """A data set is missing or malformed; the message names the file and the problem."""


class MissingDatasetError(DatasetError, FileNotFoundError):
    """A data set file or directory does not exist."""
