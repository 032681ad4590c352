"""build_splits: from a DataConfig to the train / val / test splits and their statistics."""

from __future__ import annotations

import logging

import numpy as np
import torch

from training.data.cifar import load_cifar
from training.data.config import DEFAULT_FASHION_MNIST_ROOT, DataConfig, MissingDatasetError
from training.data.dataset import (
    DataSplits,
    RawData,
    TensorImageDataset,
    channel_stats,
    class_counts,
)
from training.data.folder import build_folder_splits, build_list_splits
from training.data.idx import load_fashion_mnist
from training.data.longtail import counts_in_class_order, long_tail_counts, long_tail_indices

log = logging.getLogger(__name__)


def build_splits(cfg: DataConfig) -> DataSplits:
    if cfg.dataset == "fashion-mnist-lt":
        root = cfg.root if cfg.root is not None else DEFAULT_FASHION_MNIST_ROOT
        return long_tail_splits(cfg, load_fashion_mnist(root))
    if cfg.dataset in ("cifar10-lt", "cifar100-lt"):
        if cfg.root is None:
            raise MissingDatasetError(
                f"{cfg.dataset} needs --data-root: the directory of the official python-pickle "
                "release (cifar-10-batches-py or cifar-100-python, or the folder holding it)"
            )
        return long_tail_splits(cfg, load_cifar(cfg.root, cifar100=cfg.dataset == "cifar100-lt"))
    if cfg.dataset == "folder":
        return build_folder_splits(cfg)
    return build_list_splits(cfg)


def long_tail_splits(cfg: DataConfig, raw: RawData) -> DataSplits:
    """Long-tailed train + balanced val from the official training set; the official test set."""
    num_classes = len(raw.class_names)
    by_rank = long_tail_counts(cfg.n_max, cfg.imbalance_ratio, num_classes)
    counts = counts_in_class_order(by_rank, cfg.class_order)
    images = torch.from_numpy(np.ascontiguousarray(raw.train_images))  # uint8 [N, C, H, W]
    labels = torch.from_numpy(raw.train_labels.astype(np.int64))
    train_idx, val_idx = long_tail_indices(labels, counts, cfg.val_per_class, cfg.seed)
    train = TensorImageDataset(images[train_idx], labels[train_idx])
    val = TensorImageDataset(images[val_idx], labels[val_idx])
    test = TensorImageDataset(
        torch.from_numpy(np.ascontiguousarray(raw.test_images)),
        torch.from_numpy(raw.test_labels.astype(np.int64)),
    )
    mean, std = channel_stats(train)
    c, h, w = train.shape
    name = f"{cfg.dataset}-r{cfg.imbalance_ratio:g}"
    if cfg.class_order is not None:
        name += "-order" + "".join(f"{c}." for c in cfg.class_order).rstrip(".")
    log.info(
        "%s: train %d (per class %s), val %d, test %d, mean %s, std %s",
        name,
        len(train),
        counts,
        len(val),
        len(test),
        mean,
        std,
    )
    return DataSplits(
        name=name,
        train=train,
        val=val,
        test=test,
        class_names=list(raw.class_names),
        class_order=cfg.class_order,
        train_class_counts=class_counts(train.labels, num_classes),
        channels=c,
        height=h,
        width=w,
        mean=mean,
        std=std,
        sources={
            "train": f"long-tailed subset of the official training set (rho "
            f"{cfg.imbalance_ratio:g}, n_max {cfg.n_max}, seed {cfg.seed}"
            + ("" if cfg.class_order is None else f", classes head to tail {list(cfg.class_order)}")
            + ")",
            "val": f"{cfg.val_per_class} per class (balanced) from the official training images "
            f"outside the subset, seed {cfg.seed}",
            "test": "the official test set",
        },
    )


def describe(splits: DataSplits) -> str:
    """One line for logs: sizes, shape and the per-class training counts."""
    sizes = "/".join(str(len(p)) for p in (splits.train, splits.val, splits.test))
    return (
        f"{splits.name}: train/val/test {sizes}, {splits.num_classes} classes, "
        f"{splits.channels}x{splits.height}x{splits.width}, counts {splits.train_class_counts}"
    )
