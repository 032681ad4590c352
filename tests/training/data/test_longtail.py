import itertools
from pathlib import Path

import pytest
import torch

from training.data import DataConfig, DatasetError, long_tail_counts, long_tail_indices


def test_fashion_mnist_lt_counts() -> None:
    counts = long_tail_counts(5000, 100, 10)
    # floor(5000 * 100^(-c/9)): the CIFAR-10-LT rho=100 counts of Cao et al. (LDAM, 2019)
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(counts) == 12406


@pytest.mark.parametrize(
    ("n_max", "rho", "classes", "total"),
    [(5000, 10, 10, 20431), (5000, 50, 10, 13996), (500, 100, 100, 10847)],
)
def test_published_long_tail_totals(n_max: int, rho: float, classes: int, total: int) -> None:
    # totals published for CIFAR-10-LT rho 10 / 50 and CIFAR-100-LT rho 100
    counts = long_tail_counts(n_max, rho, classes)
    assert sum(counts) == total
    assert counts[0] == n_max and counts[-1] == int(n_max / rho)
    assert all(a >= b for a, b in itertools.pairwise(counts))


def test_degenerate_long_tails() -> None:
    assert long_tail_counts(7, 1.0, 4) == [7, 7, 7, 7]
    assert long_tail_counts(7, 100.0, 1) == [7]
    with pytest.raises(ValueError, match="last class empty"):
        long_tail_counts(10, 100, 10)
    with pytest.raises(ValueError, match="imbalance_ratio >= 1"):
        long_tail_counts(10, 0.5, 10)


def _labels(per_class: int, classes: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.arange(classes).repeat_interleave(per_class)[
        torch.randperm(per_class * classes, generator=g)
    ]


def test_subset_and_val_are_disjoint_balanced_and_deterministic() -> None:
    labels = _labels(per_class=40, classes=5)
    counts = [30, 12, 5, 2, 1]
    train, val = long_tail_indices(labels, counts, val_per_class=8, seed=1)
    assert torch.bincount(labels[train], minlength=5).tolist() == counts
    assert torch.bincount(labels[val], minlength=5).tolist() == [8] * 5
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert len(set(train.tolist())) == len(train) and len(set(val.tolist())) == len(val)
    assert torch.equal(train, train.sort().values)
    again = long_tail_indices(labels, counts, val_per_class=8, seed=1)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)
    other = long_tail_indices(labels, counts, val_per_class=8, seed=2)
    assert not torch.equal(other[0], train)


def test_val_needs_enough_unused_images() -> None:
    labels = _labels(per_class=10, classes=3)
    with pytest.raises(
        DatasetError, match=r"class 0 has 10 training images.*takes 8.*needs 5.*only 2 left"
    ):
        long_tail_indices(labels, [8, 4, 2], val_per_class=5, seed=0)
    with pytest.raises(DatasetError, match=r"class 1 has 10 .*takes 11"):
        long_tail_indices(labels, [5, 11, 2], val_per_class=1, seed=0)


def test_data_config_validates_and_accepts_json_paths() -> None:
    cfg = DataConfig(dataset="list", root="/data", train_list="a.txt")  # type: ignore[arg-type]
    assert cfg.root == Path("/data") and cfg.train_list == Path("a.txt")
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        DataConfig(dataset="mnist")
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        DataConfig(channels=2)
