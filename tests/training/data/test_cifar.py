import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import DataConfig, DatasetError, MissingDatasetError, build_splits
from training.data.cifar import load_cifar, read_pickle

from .writers import make_cifar10_dir, make_cifar100_dir, write_pickle


def test_cifar10_pickles_layout_and_names(tmp_path: Path) -> None:
    d = make_cifar10_dir(tmp_path, per_batch=20)
    raw = load_cifar(tmp_path, cifar100=False)  # the folder holding cifar-10-batches-py
    assert raw.train_images.shape == (100, 3, 32, 32) and raw.test_images.shape == (20, 3, 32, 32)
    assert raw.class_names == [f"class{c}" for c in range(10)]
    batch3 = read_pickle(d / "data_batch_3")
    row = np.asarray(batch3["data"])[7]  # 1024 red, then green, then blue, row-major
    image = raw.train_images[2 * 20 + 7]
    assert image[0, 0, 0] == row[0] and image[0, 1, 0] == row[32] and image[1, 0, 0] == row[1024]
    assert image[2, 31, 31] == row[3071]
    assert int(raw.train_labels[47]) == batch3["labels"][7]
    again = load_cifar(d, cifar100=False)  # the release directory itself
    np.testing.assert_array_equal(again.test_labels, raw.test_labels)


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    d = make_cifar100_dir(tmp_path, n_train=300, n_test=100)
    raw = load_cifar(d, cifar100=True)
    assert raw.class_names[:2] == ["fine0", "fine1"] and len(raw.class_names) == 100
    np.testing.assert_array_equal(raw.train_labels, read_pickle(d / "train")["fine_labels"])
    assert raw.train_images.shape == (300, 3, 32, 32)


def test_build_cifar10_lt(tmp_path: Path) -> None:
    make_cifar10_dir(tmp_path, per_batch=40)  # 20 images per class in train
    cfg = DataConfig(
        dataset="cifar10-lt", root=tmp_path, n_max=12, imbalance_ratio=6, val_per_class=3
    )
    splits = build_splits(cfg)
    assert splits.train_class_counts == [12, 9, 8, 6, 5, 4, 3, 2, 2, 2]
    assert torch.bincount(splits.val.labels, minlength=10).tolist() == [3] * 10
    assert (splits.channels, splits.height, splits.width) == (3, 32, 32)
    assert len(splits.test) == 40 and len(splits.mean) == 3 and len(splits.std) == 3
    assert splits.name == "cifar10-lt-r6"


def test_cifar100_lt_asks_for_smaller_n_max(tmp_path: Path) -> None:
    make_cifar100_dir(tmp_path, n_train=300, n_test=100)  # 3 per class
    with pytest.raises(DatasetError, match=r"class 0 has 3 training images.*Lower --n-max"):
        build_splits(DataConfig(dataset="cifar100-lt", root=tmp_path))


def test_missing_and_malformed_cifar(tmp_path: Path) -> None:
    with pytest.raises(MissingDatasetError, match="needs --data-root"):
        build_splits(DataConfig(dataset="cifar10-lt"))
    d = make_cifar10_dir(tmp_path, per_batch=10)
    (d / "data_batch_5").unlink()
    with pytest.raises(MissingDatasetError, match=r"data_batch_5 not found.*cifar.html"):
        load_cifar(d, cifar100=False)
    write_pickle(d / "data_batch_5", {b"data": np.zeros((10, 100), np.uint8), b"labels": [0] * 10})
    with pytest.raises(DatasetError, match=r"data_batch_5: 'data' is uint8 \(10, 100\)"):
        load_cifar(d, cifar100=False)
    write_pickle(d / "data_batch_5", {b"data": np.zeros((10, 3072), np.uint8)})
    with pytest.raises(DatasetError, match="missing key 'labels'"):
        load_cifar(d, cifar100=False)
    (d / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="test_batch: not a readable CIFAR python pickle"):
        read_pickle(d / "test_batch")


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned",))


def test_pickle_may_not_build_arbitrary_objects(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Evil()}, protocol=2))
    with pytest.raises(DatasetError, match="refusing to load"):
        read_pickle(path)
