import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import DataConfig, DatasetError, MissingDatasetError, build_splits
from training.data.idx import FASHION_MNIST_CLASSES, load_fashion_mnist, read_idx

from .writers import idx_bytes, make_fashion_dir, write_idx


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    got_images = read_idx(write_idx(tmp_path / "img", images, gz), ndim=3)
    got_labels = read_idx(write_idx(tmp_path / "lab", labels, gz), ndim=1)
    assert got_images.shape == (3, 4, 5)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.flags.writeable


def test_wrong_magic_names_file_and_expectation(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels", np.zeros(4, dtype=np.uint8), gz=True)
    with pytest.raises(
        DatasetError, match=r"labels: IDX magic number 0x00000801, expected 0x00000803"
    ):
        read_idx(path, ndim=3)


def test_truncated_payload(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8))[:-1]
    (tmp_path / "img").write_bytes(data)
    with pytest.raises(DatasetError, match=r"dimensions \(2, 3, 3\).*holds 33 bytes.*truncated"):
        read_idx(tmp_path / "img", ndim=3)


def test_short_and_corrupt_files(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"\x00\x00")
    with pytest.raises(DatasetError, match="too short"):
        read_idx(tmp_path / "short", ndim=1)
    corrupt = gzip.compress(idx_bytes(np.zeros(10, dtype=np.uint8)))[:-8]
    (tmp_path / "corrupt.gz").write_bytes(corrupt)
    with pytest.raises(DatasetError, match="corrupt gzip"):
        read_idx(tmp_path / "corrupt.gz", ndim=1)


def test_missing_file_says_how_to_get_it(tmp_path: Path) -> None:
    make_fashion_dir(tmp_path, 2, 1)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(MissingDatasetError) as e:
        load_fashion_mnist(tmp_path)
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--data-root" in msg
    with pytest.raises(MissingDatasetError, match="does not exist"):
        load_fashion_mnist(tmp_path / "nowhere")


def test_label_count_mismatch_and_range(tmp_path: Path) -> None:
    make_fashion_dir(tmp_path, 2, 1)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, dtype=np.uint8), gz=False)
    with pytest.raises(DatasetError, match=r"holds 10 images but .* holds 3 labels"):
        load_fashion_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(10, 10, dtype=np.uint8), gz=False)
    with pytest.raises(DatasetError, match=r"label 10 outside 0\.\.9"):
        load_fashion_mnist(tmp_path)


def test_build_splits_on_generated_fashion_mnist(tmp_path: Path) -> None:
    root = make_fashion_dir(tmp_path, per_class_train=30, per_class_test=3)
    raw = load_fashion_mnist(root)
    cfg = DataConfig(root=root, n_max=20, imbalance_ratio=10, val_per_class=5, seed=3)
    splits = build_splits(cfg)
    # floor(20 * 10^(-c/9)), by hand: 20, 15.49, 11.99, 9.28, 7.19, 5.57, 4.31, 3.34, 2.58, 2
    assert splits.train_class_counts == [20, 15, 11, 9, 7, 5, 4, 3, 2, 2]
    assert torch.bincount(splits.val.labels, minlength=10).tolist() == [5] * 10
    assert len(splits.test) == 30
    assert splits.class_names == FASHION_MNIST_CLASSES
    assert (splits.channels, splits.height, splits.width) == (1, 28, 28)
    image, label = splits.test[4]
    assert image.dtype == torch.uint8 and image.shape == (1, 28, 28)
    np.testing.assert_array_equal(image[0].numpy(), raw.test_images[4, 0])
    assert label == int(raw.test_labels[4])
    pixels = torch.stack([splits.train[i][0] for i in range(len(splits.train))]).double() / 255
    assert splits.mean[0] == pytest.approx(pixels.mean().item(), abs=1e-9)
    assert splits.std[0] == pytest.approx(pixels.std(unbiased=False).item(), abs=1e-9)


def test_class_order_moves_the_tail_and_is_recorded(tmp_path: Path) -> None:
    root = make_fashion_dir(tmp_path, per_class_train=30, per_class_test=3)
    order = (9, 8, 7, 5, 3, 1, 0, 2, 4, 6)  # 6 is the rarest class, 9 the head
    cfg = DataConfig(root=root, n_max=20, imbalance_ratio=10, val_per_class=5, class_order=order)
    splits = build_splits(cfg)
    by_rank = [20, 15, 11, 9, 7, 5, 4, 3, 2, 2]
    assert [splits.train_class_counts[c] for c in order] == by_rank
    assert splits.train_class_counts[6] == 2 and splits.train_class_counts[9] == 20
    assert torch.bincount(splits.val.labels, minlength=10).tolist() == [5] * 10
    assert splits.class_order == order
    assert splits.name == "fashion-mnist-lt-r10-order9.8.7.5.3.1.0.2.4.6"
    assert "classes head to tail [9, 8, 7, 5, 3, 1, 0, 2, 4, 6]" in splits.sources["train"]
    default = build_splits(DataConfig(root=root, n_max=20, imbalance_ratio=10, val_per_class=5))
    assert default.class_order is None and default.name == "fashion-mnist-lt-r10"


def test_class_order_must_name_every_class_once(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"permutation of 0\.\.C-1"):
        DataConfig(class_order=(0, 0, 1))
    with pytest.raises(ValueError, match="folder/list data have none"):
        DataConfig(dataset="folder", class_order=(1, 0))
    root = make_fashion_dir(tmp_path, per_class_train=30, per_class_test=3)
    with pytest.raises(DatasetError, match="names 3 classes; the data set has 10"):
        build_splits(
            DataConfig(
                root=root, n_max=20, imbalance_ratio=10, val_per_class=5, class_order=(2, 1, 0)
            )
        )
