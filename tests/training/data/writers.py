"""Writers of small generated data sets in the official file formats (for the tests)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: 0x0000, type 0x08, ndim, big-endian uint32 dims, payload."""
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_fashion_dir(root: Path, per_class_train: int, per_class_test: int, seed: int = 0) -> Path:
    """Fashion-MNIST-like IDX files: train images gzip, the rest plain (both must be read)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, per_class, gz in (("train", per_class_train, True), ("t10k", per_class_test, False)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        images = rng.integers(0, 256, size=(labels.size, 28, 28), dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(root / f"{split}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", labels, gz)
    return root


def cifar_batch(n: int, num_classes: int, label_key: bytes, rng: np.random.Generator) -> dict:
    labels = rng.permutation(np.arange(n) % num_classes).tolist()
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return {b"batch_label": b"generated", label_key: labels, b"data": data}


def write_pickle(path: Path, obj: object) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar10_dir(parent: Path, per_batch: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    d = parent / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i in range(1, 6):
        write_pickle(d / f"data_batch_{i}", cifar_batch(per_batch, 10, b"labels", rng))
    write_pickle(d / "test_batch", cifar_batch(per_batch, 10, b"labels", rng))
    names = [f"class{c}".encode() for c in range(10)]
    write_pickle(d / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return d


def make_cifar100_dir(parent: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    d = parent / "cifar-100-python"
    d.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = cifar_batch(n, 100, b"fine_labels", rng)
        batch[b"coarse_labels"] = [c // 5 for c in batch[b"fine_labels"]]
        write_pickle(d / name, batch)
    meta = {
        b"fine_label_names": [f"fine{c}".encode() for c in range(100)],
        b"coarse_label_names": [f"coarse{c}".encode() for c in range(20)],
    }
    write_pickle(d / "meta", meta)
    return d


def write_png(path: Path, pixels: np.ndarray) -> Path:
    """pixels uint8 [H, W] (grey) or [H, W, 3] (RGB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path
