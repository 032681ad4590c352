"""Benchmark image sets: real Fashion-MNIST test images written as files, with their labels.

An image set is a directory of encoded images plus `labels.tsv` (`file<TAB>label`, one line per
image). The serving benchmarks post those files; the in-process runner decodes the same bytes
with the server's own preprocessing, so every path sees identical inputs.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
LABELS_FILE = "labels.tsv"
CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


@dataclass(frozen=True)
class ImageSet:
    directory: Path
    files: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.files)

    def paths(self) -> list[Path]:
        return [self.directory / f for f in self.files]

    def read(self) -> list[bytes]:
        return [p.read_bytes() for p in self.paths()]


def read_idx_gz(path: Path) -> np.ndarray:
    """An IDX file (gzip) -> uint8 array; images [N, 28, 28], labels [N]."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(split: str, root: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of the official "train" or "test" split."""
    prefix = "t10k" if split == "test" else "train"
    images = read_idx_gz(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx_gz(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


def encode(pixels: np.ndarray, size: int, channels: int, fmt: str) -> bytes:
    """uint8 [28, 28] -> an encoded image of size x size px, grey (1) or RGB (3), PNG or JPEG."""
    img = Image.fromarray(pixels, mode="L")
    if size != img.width:
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    if channels == 3:
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_image_set(
    out: Path,
    *,
    count: int,
    size: int = 28,
    channels: int = 1,
    fmt: str = "PNG",
    split: str = "test",
    offset: int = 0,
) -> ImageSet:
    """Images offset..offset+count of a Fashion-MNIST split as files; reused when already there."""
    existing = load_image_set(out) if (out / LABELS_FILE).is_file() else None
    if existing is not None and len(existing) == count:
        return existing
    images, labels = fashion_mnist(split)
    out.mkdir(parents=True, exist_ok=True)
    ext = ".png" if fmt == "PNG" else ".jpg"
    files, ys = [], []
    for i in range(offset, offset + count):
        name = f"{split}_{i:05d}{ext}"
        (out / name).write_bytes(encode(images[i], size, channels, fmt))
        files.append(name)
        ys.append(int(labels[i]))
    lines = "".join(f"{f}\t{y}\n" for f, y in zip(files, ys, strict=True))
    (out / LABELS_FILE).write_text(lines, encoding="utf-8")
    return ImageSet(out, files, ys)


def load_image_set(directory: Path) -> ImageSet:
    """A directory with labels.tsv (or labels.txt): `file<TAB or spaces>label` per line."""
    for name in (LABELS_FILE, "labels.txt"):
        path = directory / name
        if path.is_file():
            break
    else:
        raise FileNotFoundError(f"{directory}: no {LABELS_FILE} (file<TAB>label per line)")
    files, labels = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise ValueError(f"{path}:{n}: expected 'file label', got {line!r}")
        if not (directory / parts[0]).is_file():
            raise FileNotFoundError(f"{path}:{n}: {directory / parts[0]} does not exist")
        if Path(parts[0]).suffix.lower() not in CONTENT_TYPES:
            raise ValueError(f"{path}:{n}: {parts[0]}: only {sorted(CONTENT_TYPES)} are posted")
        files.append(parts[0])
        labels.append(int(parts[1]))
    if not files:
        raise ValueError(f"{path}: no images listed")
    return ImageSet(directory, files, labels)


def content_type(file: str) -> str:
    return CONTENT_TYPES[Path(file).suffix.lower()]
