"""IDX files (the MNIST / Fashion-MNIST format), gzip-compressed or plain, and Fashion-MNIST."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from training.data.config import DatasetError, MissingDatasetError
from training.data.dataset import RawData

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
HOW_TO_GET = "Install it with `apt-get install dataset-fashion-mnist` or pass --data-root DIR"
_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file with `ndim` dimensions (gzip or plain, by content).

    Header: two zero bytes, the type code (0x08 = ubyte), the number of dimensions, then one
    big-endian uint32 per dimension; the payload must hold exactly prod(dims) bytes.
    """
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DatasetError(f"{path}: corrupt gzip data ({e})") from e
    expected_magic = (_UBYTE << 8) | ndim
    if len(raw) < 4:
        raise DatasetError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DatasetError(
            f"{path}: IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(unsigned bytes, {ndim} dimension(s)); is this the right file?"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} of {header_len} bytes)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_len + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DatasetError(
            f"{path}: IDX header says dimensions {dims} ({expected} bytes with the header) "
            f"but the file holds {len(raw)} bytes; the file is truncated or corrupt"
        )
    # copy: torch wants a writable buffer, and the decompressed bytes are not kept
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims).copy()


def find_idx_file(root: Path, stem: str) -> Path:
    """`stem.gz` or plain `stem` under root, with an error that says how to get it."""
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    wanted = ", ".join(f"{s}.gz" for s in FASHION_MNIST_FILES.values())
    raise MissingDatasetError(
        f"Fashion-MNIST file {root / stem}.gz (or {stem}) not found. Expected the IDX files "
        f"{wanted} (gzip or plain) in {root}. {HOW_TO_GET}."
    )


def load_fashion_mnist(root: Path) -> RawData:
    """The official train (60k) and test (10k) sets; images uint8 [N, 1, 28, 28]."""
    if not root.is_dir():
        raise MissingDatasetError(f"Fashion-MNIST directory {root} does not exist. {HOW_TO_GET}.")
    out: list[np.ndarray] = []
    for split in ("train", "test"):
        images_path = find_idx_file(root, FASHION_MNIST_FILES[f"{split}_images"])
        labels_path = find_idx_file(root, FASHION_MNIST_FILES[f"{split}_labels"])
        images = read_idx(images_path, ndim=3)
        labels = read_idx(labels_path, ndim=1)
        if images.shape[1:] != (28, 28):
            raise DatasetError(f"{images_path}: images are {images.shape[1:]}, expected 28x28")
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                f"{labels.shape[0]} labels"
            )
        if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise DatasetError(f"{labels_path}: label {int(labels.max())} outside 0..9")
        out += [images[:, None], labels]  # [N, 28, 28] -> [N, 1, 28, 28]
    return RawData(out[0], out[1], out[2], out[3], list(FASHION_MNIST_CLASSES))
