"""CIFAR-10 / CIFAR-100 in the official python-pickle layout."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from training.data.config import DatasetError, MissingDatasetError
from training.data.dataset import RawData

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
HOW_TO_GET = (
    "Download the python version from https://www.cs.toronto.edu/~kriz/cifar.html, unpack it and "
    "pass its directory as --data-root"
)
# The official pickles hold dicts of bytes, lists and numpy arrays; nothing else may be built.
# _codecs.encode is how protocol 2 written by Python 3 stores bytes (a pure function).
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR pickle")
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR pickle as a dict with str keys (the files were written by Python 2)."""
    if not path.is_file():
        raise MissingDatasetError(f"CIFAR file {path} not found. {HOW_TO_GET}.")
    try:
        with path.open("rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DatasetError(f"{path}: not a readable CIFAR python pickle ({e})") from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _field(batch: dict[str, Any], key: str, path: Path) -> Any:
    if key not in batch:
        raise DatasetError(f"{path}: missing key {key!r} (has {sorted(batch)})")
    return batch[key]


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 3, 32, 32], labels int64 [N]) from one batch file."""
    batch = read_pickle(path)
    data = np.asarray(_field(batch, "data", path))
    labels = np.asarray(_field(batch, label_key, path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(
            f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 [N, 3072] "
            "(rows of 32x32 red, green, blue planes)"
        )
    if labels.shape != (data.shape[0],):
        raise DatasetError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{path}: labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def _class_names(path: Path, key: str, num_classes: int) -> list[str]:
    names = [
        n.decode() if isinstance(n, bytes) else str(n) for n in _field(read_pickle(path), key, path)
    ]
    if len(names) != num_classes:
        raise DatasetError(
            f"{path}: {len(names)} class names under {key!r}, expected {num_classes}"
        )
    return names


def resolve_dir(root: Path, cifar100: bool) -> Path:
    """The release directory itself, or the folder holding it."""
    sub = CIFAR100_DIR if cifar100 else CIFAR10_DIR
    if (root / sub).is_dir():
        return root / sub
    if root.is_dir():
        return root
    raise MissingDatasetError(f"CIFAR directory {root} does not exist. {HOW_TO_GET}.")


def load_cifar(root: Path, cifar100: bool) -> RawData:
    """The official train (50k) and test (10k) sets; images uint8 [N, 3, 32, 32]."""
    d = resolve_dir(root, cifar100)
    if cifar100:
        num_classes, label_key = 100, "fine_labels"
        names = _class_names(d / "meta", "fine_label_names", num_classes)
        train_files, test_file = [d / "train"], d / "test"
    else:
        num_classes, label_key = 10, "labels"
        names = _class_names(d / "batches.meta", "label_names", num_classes)
        train_files = [d / f"data_batch_{i}" for i in range(1, 6)]
        test_file = d / "test_batch"
    parts = [_read_batch(p, label_key, num_classes) for p in train_files]
    x_test, y_test = _read_batch(test_file, label_key, num_classes)
    x_train = np.concatenate([x for x, _ in parts])
    y_train = np.concatenate([y for _, y in parts])
    return RawData(x_train, y_train, x_test, y_test, names)
