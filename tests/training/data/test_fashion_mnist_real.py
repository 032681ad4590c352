"""The real Fashion-MNIST from the Debian package dataset-fashion-mnist (CI installs it)."""

import pytest
import torch

from training.data import DataConfig, build_splits
from training.data.config import DEFAULT_FASHION_MNIST_ROOT

pytestmark = pytest.mark.skipif(
    not DEFAULT_FASHION_MNIST_ROOT.is_dir(),
    reason=f"{DEFAULT_FASHION_MNIST_ROOT} absent: apt-get install dataset-fashion-mnist",
)


def test_real_fashion_mnist_lt() -> None:
    splits = build_splits(DataConfig())
    assert len(splits.train) == 12406
    assert splits.train_class_counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert len(splits.val) == 2000
    assert torch.bincount(splits.val.labels, minlength=10).tolist() == [200] * 10
    assert len(splits.test) == 10000
    assert torch.bincount(splits.test.labels, minlength=10).tolist() == [1000] * 10
    assert (splits.channels, splits.height, splits.width) == (1, 28, 28)
    image, label = splits.train[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8 and 0 <= label < 10
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"
    # Fashion-MNIST's pixel mean is about 0.286 over all 60k; the head-heavy subset is near it
    assert 0.2 < splits.mean[0] < 0.4 and 0.25 < splits.std[0] < 0.45
