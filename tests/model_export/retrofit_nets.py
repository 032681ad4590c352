"""Small CNN classifiers that are not the project's networks, exported with torch's ONNX exporter,
and generated, separable long-tailed data in the Fashion-MNIST file format."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from tests.model_export.conftest import _write_idx

CLASSES = 10


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class PlainCNN(nn.Module):
    """Two downsampling stages with a residual block each, then pool + linear."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = Residual(8)
        self.down1 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.block2 = Residual(16)
        self.down2 = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Linear(24, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down2(self.block2(self.down1(self.block1(self.stem(x)))))
        return self.classifier(x.mean(dim=(2, 3)))


class TwoOutputs(PlainCNN):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return super().forward(x), x


def export(net: nn.Module, path: Path, size: int = 28) -> Path:
    """torch's dynamo exporter, dynamic batch axis, one file; names its own tensors."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, size, size)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            (x,),
            str(path),
            dynamo=True,
            external_data=False,
            input_names=["image"],
            output_names=["scores"],
            dynamic_shapes={"x": {0: torch.export.Dim("n", min=1)}},
        )
    return path


def non_separating_tensor(path: Path) -> str:
    """A tensor inside a residual block: the branch that the skip connection goes around."""
    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "Add":
            for t in node.input:
                if t in producer and producer[t].op_type == "Conv":
                    return t
    raise AssertionError("no residual Add found")


def make_data(root: Path, train_per_class: int = 50, test_per_class: int = 15) -> Path:
    """Fashion-MNIST-format files: class c is a bright square at its own place on noise."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(CLASSES), per_class)).astype(np.uint8)
        x = rng.normal(60.0, 25.0, size=(labels.size, 28, 28))
        for i, c in enumerate(labels):
            r, col = 2 + 12 * (c // 5), 1 + 5 * (c % 5)
            x[i, r : r + 10, col : col + 5] += 120.0
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", np.clip(x, 0, 255).astype(np.uint8))
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root
