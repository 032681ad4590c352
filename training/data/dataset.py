"""ImageDataset (every split is one), DataSplits, and per-channel statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset


class RawData(NamedTuple):
    """A whole official data set in memory, before the long-tail cut."""

    train_images: np.ndarray  # uint8 [N, C, H, W]
    train_labels: np.ndarray  # integer [N], in 0..len(class_names)-1
    test_images: np.ndarray  # uint8 [M, C, H, W]
    test_labels: np.ndarray  # integer [M]
    class_names: list[str]


class ImageDataset(Dataset[tuple[Tensor, int]]):
    """A split: item i is (uint8 image [C, H, W], label). Subclasses hold the images."""

    labels: Tensor  # int64 [N]
    shape: tuple[int, int, int]  # (C, H, W) of every image

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        raise NotImplementedError

    def batch(self, indices: Tensor) -> Tensor:
        """uint8 [B, C, H, W] for the given indices (int64 [B])."""
        return torch.stack([self[int(i)][0] for i in indices])


class TensorImageDataset(ImageDataset):
    """In memory: images uint8 [N, C, H, W], labels int64 [N]."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels must be [N] with N = {images.shape[0]}, got {tuple(labels.shape)}"
            )
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)
        c, h, w = images.shape[1:]
        self.shape = (int(c), int(h), int(w))

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])

    def batch(self, indices: Tensor) -> Tensor:
        return self.images[indices]


@dataclass(frozen=True)
class DataSplits:
    name: str
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    class_names: list[str]
    train_class_counts: list[int]  # per class, in the (long-tailed) training split
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]  # per channel, on the [0, 1] pixel scale, from the train split
    std: tuple[float, ...]
    # what each split is made of ("train", "val", "test" -> a sentence); metrics.json repeats it
    sources: dict[str, str] = field(default_factory=dict)
    # the long tail's class order, head first (None: the data set's own order)
    class_order: tuple[int, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def class_counts(labels: Tensor, num_classes: int) -> list[int]:
    return [int(n) for n in torch.bincount(labels, minlength=num_classes)[:num_classes]]


def channel_stats(
    data: ImageDataset, max_images: int | None = None, seed: int = 0, chunk: int = 1024
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the [0, 1] scale over all images (or a seeded sample).

    Summed in float64 chunk by chunk so that CIFAR-sized sets need no float copy of the whole set.
    """
    n = len(data)
    if n == 0:
        raise ValueError("cannot compute mean/std of an empty training split")
    indices = torch.arange(n)
    if max_images is not None and n > max_images:
        g = torch.Generator().manual_seed(seed)
        indices = torch.randperm(n, generator=g)[:max_images].sort().values
    channels = data.shape[0]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for start in range(0, len(indices), chunk):
        x = data.batch(indices[start : start + chunk]).to(torch.float64).div_(255.0)  # [B, C, H, W]
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0.0).sqrt()
    if bool((std == 0).any()):
        raise DatasetStatsError(f"a channel of the training split is constant (std {std.tolist()})")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


class DatasetStatsError(ValueError):
    """The training split's statistics make normalization impossible."""
