"""Data sets: Fashion-MNIST-LT, CIFAR-10/100-LT, image folders and list files."""

from training.data.config import DataConfig, DatasetError, MissingDatasetError
from training.data.dataset import DataSplits, ImageDataset, TensorImageDataset, channel_stats
from training.data.longtail import long_tail_counts, long_tail_indices
from training.data.splits import build_splits
from training.data.transforms import AugmentConfig, augment, normalize, random_crop_flip

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "DataSplits",
    "DatasetError",
    "ImageDataset",
    "MissingDatasetError",
    "TensorImageDataset",
    "augment",
    "build_splits",
    "channel_stats",
    "long_tail_counts",
    "long_tail_indices",
    "normalize",
    "random_crop_flip",
]
