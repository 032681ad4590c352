"""Images decoded lazily from files with Pillow (for the user's own data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from training.data.config import DatasetError
from training.data.dataset import ImageDataset

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def image_size_of(path: Path) -> tuple[int, int]:
    """(height, width) from the header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{path}: cannot read image ({e})") from e
    return h, w


def load_image(path: Path, channels: int, size: tuple[int, int], resize: bool) -> Tensor:
    """uint8 [channels, H, W]; resized (bilinear) to size = (H, W) if `resize`, else must match."""
    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as opened:
            im = opened.convert(mode)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{path}: cannot decode image ({e})") from e
    h, w = size
    if im.size != (w, h):
        if not resize:
            raise DatasetError(
                f"{path}: image is {im.size[1]}x{im.size[0]} but the data set's images are "
                f"{h}x{w}; set --image-size to resize every image to one square size"
            )
        im = im.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)  # [H, W] or [H, W, 3]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


class FileImageDataset(ImageDataset):
    """Lazily decoded images: item i is load_image(paths[i]) and labels[i]."""

    def __init__(
        self, paths: list[Path], labels: Tensor, channels: int, size: tuple[int, int], resize: bool
    ) -> None:
        if len(paths) != labels.shape[0]:
            raise ValueError(f"{len(paths)} paths but {labels.shape[0]} labels")
        self.paths = list(paths)
        self.labels = labels.to(torch.int64)
        self.resize = resize
        self.shape = (channels, size[0], size[1])

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        c, h, w = self.shape
        return load_image(self.paths[i], c, (h, w), self.resize), int(self.labels[i])


def make_file_datasets(
    parts: list[tuple[list[Path], list[int]]], channels: int, image_size: int | None
) -> list[FileImageDataset]:
    """One FileImageDataset per (paths, labels) part, all sharing one image shape.

    With no image_size the first training image's size is the data set's native size, and any
    image of another size fails when it is loaded (nothing is silently resized).
    """
    if not parts or not parts[0][0]:
        raise DatasetError("the training split holds no images")
    if image_size is None:
        size, resize = image_size_of(parts[0][0][0]), False
    else:
        size, resize = (image_size, image_size), True
    return [
        FileImageDataset(paths, torch.tensor(labels, dtype=torch.int64), channels, size, resize)
        for paths, labels in parts
    ]
