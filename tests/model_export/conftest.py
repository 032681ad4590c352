"""A tiny trained ELF network on generated Fashion-MNIST-like data, exported once per session."""

from __future__ import annotations

import contextlib
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model_export.cli import main
from training.checkpoint import save_checkpoint
from training.config import TrainConfig
from training.data import DataConfig, build_splits, normalize
from training.losses import LossConfig
from training.networks import ModelConfig, build_model

TRAIN_PER_CLASS = 40
TEST_PER_CLASS = 12


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Unsigned-byte IDX: 0, 0, type 0x08, ndim, big-endian uint32 dims, payload (gzip)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 noise around a class-dependent brightness, shifted per image so that neighbouring
    classes overlap: learnable by global pooling, but not perfectly (confidence varies)."""
    base = 30.0 + 20.0 * labels + rng.normal(0.0, 8.0, size=labels.size)  # [N]
    x = base[:, None, None] + rng.normal(0.0, 30.0, size=(labels.size, 28, 28))
    return np.clip(x, 0, 255).astype(np.uint8)


def make_fashion_dir(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", TRAIN_PER_CLASS), ("t10k", TEST_PER_CLASS)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", _images(labels, rng))
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def tiny_config(root: Path, out: Path) -> TrainConfig:
    return TrainConfig(
        out=out,
        epochs=1,
        data=DataConfig(root=root, n_max=30, imbalance_ratio=10.0, val_per_class=5),
        model=ModelConfig(arch="resnet8", width_mult=0.25, head="conv_pool_linear"),
        # train_tiny uses plain cross-entropy: the provenance must say so.
        loss=LossConfig(method="elf", base="ce"),
    )


def train_tiny(cfg: TrainConfig, steps: int = 15) -> torch.nn.Module:
    """A few Adam steps on the sum of every exit's cross-entropy: enough to move off init."""
    torch.manual_seed(0)
    splits = build_splits(cfg.data)
    net = build_model(cfg.model)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    images, labels = splits.train.batch(torch.arange(len(splits.train))), splits.train.labels
    net.train()
    for _ in range(steps):
        x = normalize(images, splits.mean, splits.std)
        loss = sum(F.cross_entropy(z, labels) for z in net(x))
        opt.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        opt.step()
    return net.eval()


@dataclass(frozen=True)
class Exported:
    checkpoint: Path
    model_dir: Path
    config: TrainConfig
    stdout: str


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    base = tmp_path_factory.mktemp("export")
    cfg = tiny_config(make_fashion_dir(base / "fashion"), base / "run")
    net = train_tiny(cfg)
    ckpt = base / "run" / "checkpoint.pt"
    save_checkpoint(ckpt, net, None, None, 1, cfg, {})
    out = base / "models" / "tiny-lt"
    capture = base / "stdout.txt"
    with capture.open("w") as f, contextlib.redirect_stdout(f):
        rc = main(
            ["--checkpoint", str(ckpt), "--out", str(out), "--no-progress", "--version", "0.1"]
        )
    assert rc == 0
    return Exported(ckpt, out, cfg, capture.read_text())
