"""train_one_epoch and the forward pass over a split (every exit's softmax)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from training.data import AugmentConfig, ImageDataset, augment, normalize
from training.distributed import DistInfo, all_reduce_sum
from training.losses import MultiExitLoss

log = logging.getLogger(__name__)


class _Batches(Dataset[tuple[Tensor, Tensor]]):
    """Item = a whole batch: indices [B] -> (uint8 images [B, C, H, W], labels int64 [B]).

    In-memory splits index one tensor; lazily decoded ones decode in DataLoader workers.
    """

    def __init__(self, data: ImageDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, indices: Any) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return self.data.batch(idx), self.data.labels[idx]


def batches(
    data: ImageDataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    info: DistInfo,
    workers: int = 0,
) -> DataLoader[tuple[Tensor, Tensor]]:
    """Batches of this process's share (DistributedSampler pads so every rank gets as many)."""
    sampler: DistributedSampler[Any] = DistributedSampler(
        data, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=seed
    )
    sampler.set_epoch(epoch)
    order = BatchSampler(sampler, batch_size, drop_last=False)
    return DataLoader(
        _Batches(data), sampler=order, batch_size=None, num_workers=workers, pin_memory=False
    )


def sequential_batches(data: ImageDataset, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Every image once, in order (evaluation on one process)."""
    view = _Batches(data)
    for start in range(0, len(data), batch_size):
        yield view[torch.arange(start, min(start + batch_size, len(data)))]


@dataclass(frozen=True)
class InputSpec:
    """How uint8 batches become the network's input."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels_last: bool = False


def to_input(x: Tensor, spec: InputSpec, device: torch.device) -> Tensor:
    out = normalize(x.to(device, non_blocking=True), spec.mean, spec.std)  # float32 [B, C, H, W]
    return out.contiguous(memory_format=torch.channels_last) if spec.channels_last else out


def train_one_epoch(
    model: nn.Module,
    loss_fn: MultiExitLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: DataLoader[tuple[Tensor, Tensor]],
    *,
    spec: InputSpec,
    aug: AugmentConfig,
    generator: torch.Generator,
    device: torch.device,
    info: DistInfo,
    progress: bool = True,
    desc: str = "train",
) -> dict[str, Any]:
    """One pass over this process's batches; returns metrics summed over every process."""
    model.train()
    K = loss_fn.num_exits
    # [loss sum, examples, per-exit loss sums (K), per-exit correct (K), exit counts (K)]
    stats = torch.zeros(2 + 3 * K, dtype=torch.float64)
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, disable=not (progress and info.is_main), leave=False)
    for images, labels in bar:
        x = to_input(augment(images, aug, generator), spec, device)
        y = labels.to(device, non_blocking=True)
        logits = model(x)
        out = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        scheduler.step()
        b = y.shape[0]
        with torch.no_grad():
            correct = torch.stack([(z.argmax(1) == y).sum() for z in logits]).double().cpu()
            counts = torch.bincount(out.exit_index, minlength=K).double().cpu()
        stats += torch.cat(
            [
                torch.tensor([out.loss.item() * b, b]),
                out.per_exit.double().cpu() * b,
                correct,
                counts,
            ]
        )
        bar.set_postfix(loss=f"{out.loss.item():.3f}")
    all_reduce_sum(stats, info)
    n = stats[1].item()
    return {
        "train_loss": stats[0].item() / n,
        "train_exit_loss": (stats[2 : 2 + K] / n).tolist(),
        "train_exit_acc": (stats[2 + K : 2 + 2 * K] / n).tolist(),
        "train_exit_rate": (stats[2 + 2 * K :] / n).tolist(),
        "train_images": int(n),
        "train_seconds": time.perf_counter() - start,
    }


@torch.no_grad()
def predict(
    model: nn.Module,
    data: ImageDataset,
    spec: InputSpec,
    device: torch.device,
    *,
    batch_size: int = 500,
    progress: bool = False,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Softmax of every exit over a split: ([K] x float32 [N, C], labels int64 [N])."""
    was_training = model.training
    model.eval()
    chunks: list[list[Tensor]] = []
    n_batches = (len(data) + batch_size - 1) // batch_size
    batch_iter = sequential_batches(data, batch_size)
    for images, _ in tqdm(
        batch_iter, total=n_batches, desc="eval", disable=not progress, leave=False
    ):
        logits = model(to_input(images, spec, device))
        chunks.append([torch.softmax(z.float(), dim=1).cpu() for z in logits])
    model.train(was_training)
    probs = [torch.cat([c[k] for c in chunks]).numpy() for k in range(len(chunks[0]))]
    return probs, data.labels.numpy().astype(np.int64)


class FirstExitWatch:
    """Warns when the share of training images counted as exited at the first exit stays above
    `bound` for `epochs` consecutive epochs: the deeper exits then learn from a few images
    (how an ELF run collapses without failing)."""

    def __init__(self, bound: float = 0.7, epochs: int = 3) -> None:
        self.bound, self.epochs, self.streak = bound, epochs, 0

    def update(self, epoch: int, exit_rate: list[float]) -> bool:
        """One epoch's `train_exit_rate`; True (and a warning) when the streak reaches `epochs`."""
        if len(exit_rate) < 2:
            return False
        self.streak = self.streak + 1 if exit_rate[0] > self.bound else 0
        if self.streak != self.epochs:
            return False
        log.warning(
            "epoch %d: %.0f%% of training images counted as exited at exit 0, above %.0f%% for "
            "%d epochs: the deeper exits learn from few images (raise --tau-train)",
            epoch,
            100 * exit_rate[0],
            100 * self.bound,
            self.epochs,
        )
        return True
