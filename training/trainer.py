"""main(cfg): build data, model and optimizer; train_one_epoch and validate per epoch; final
metrics on the test set. Under torchrun every process trains, and rank 0 writes the outputs."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from elf_core.accuracy import balanced_accuracy
from elf_core.calibration import calibrate
from elf_core.flops import cumulative_flops_ratio
from training.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint, unwrap
from training.config import TrainConfig, to_dict
from training.data import DataSplits, ImageDataset, build_splits
from training.distributed import (
    DistInfo,
    barrier,
    cleanup,
    init_distributed,
    resolve_device,
    wrap_model,
)
from training.evaluate import final_metrics, plot_per_class
from training.flops import stage_flops
from training.loop import FirstExitWatch, InputSpec, batches, predict, train_one_epoch
from training.losses import MultiExitLoss
from training.networks import MultiExitNet, build_model
from training.optim import make_optimizer
from training.provenance import git_commit

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
HISTORY_FILE = "metrics.jsonl"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.npz"
PLOT_FILE = "per_class_accuracy.png"


def resolve_config(cfg: TrainConfig, splits: DataSplits) -> TrainConfig:
    """The model's classes and input channels come from the data."""
    model = dataclasses.replace(
        cfg.model, num_classes=splits.num_classes, in_channels=splits.channels
    )
    return dataclasses.replace(cfg, model=model)


def _setup_threads(cfg: TrainConfig, device: torch.device) -> None:
    if device.type == "cpu":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world))
        # Denormal floats (tiny weights and gradients late in training) are slow on CPUs.
        torch.set_flush_denormal(True)


def _data_info(splits: DataSplits) -> dict[str, Any]:
    return {
        "name": splits.name,
        "class_names": list(splits.class_names),
        "class_order": None if splits.class_order is None else list(splits.class_order),
        "train_class_counts": list(splits.train_class_counts),
        "channels": splits.channels,
        "height": splits.height,
        "width": splits.width,
        "mean": list(splits.mean),
        "std": list(splits.std),
    }


@dataclass(frozen=True)
class _Run:
    """What the evaluation steps share: the resolved config, data, network and its FLOPs."""

    cfg: TrainConfig
    splits: DataSplits
    model: MultiExitNet
    spec: InputSpec
    device: torch.device
    per_stage: list[tuple[int, int]]

    def predict(
        self, data: ImageDataset, progress: bool = False
    ) -> tuple[list[np.ndarray], np.ndarray]:
        return predict(
            self.model,
            data,
            self.spec,
            self.device,
            batch_size=self.cfg.eval_batch_size,
            progress=progress,
        )


def _validate(run: _Run) -> dict[str, Any]:
    """Validation numbers, for choosing variants without looking at the test set."""
    probs, labels = run.predict(run.splits.val)
    cal = calibrate(
        probs,
        labels,
        cumulative_flops_ratio(run.per_stage),
        run.cfg.calibration_tolerance,
        train_class_counts=run.splits.train_class_counts,
    )
    return {
        "val_exit_balanced_top1": [
            balanced_accuracy(p.argmax(axis=1), labels, p.shape[1]) for p in probs
        ],
        "val_ee_best": cal.best.balanced_accuracy,
        "val_ee_best_tail": cal.best.tail_accuracy,
        "val_ee_best_flops_ratio": cal.best.flops_ratio,
        "val_ee_chosen": cal.chosen.balanced_accuracy,
        "val_ee_chosen_flops_ratio": cal.chosen.flops_ratio,
    }


def _finish(run: _Run) -> dict[str, Any]:
    """Test-set metrics (thresholds calibrated on validation), predictions and the plot."""
    cfg, splits = run.cfg, run.splits
    val = run.predict(splits.val, cfg.progress)
    test = run.predict(splits.test, cfg.progress)
    metrics = final_metrics(
        val,
        test,
        run.per_stage,
        train_class_counts=splits.train_class_counts,
        fixed_thresholds=cfg.eval_thresholds,
        tolerance=cfg.calibration_tolerance,
    )
    metrics = {
        "dataset": splits.name,
        "class_names": list(splits.class_names),
        "class_order": None if splits.class_order is None else list(splits.class_order),
        "method": cfg.loss.method,
        "loss": cfg.loss.base,
        "arch": cfg.model.arch,
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "command": cfg.command,
        "commit": git_commit(),
        "splits": {
            name: {"images": len(data), "source": splits.sources.get(name, "")}
            for name, data in (("train", splits.train), ("val", splits.val), ("test", splits.test))
        },
        **metrics,
    }
    (cfg.out / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    arrays = {f"val_probs_{k}": p for k, p in enumerate(val[0])}
    arrays |= {f"test_probs_{k}": p for k, p in enumerate(test[0])}
    arrays |= {"val_labels": val[1], "test_labels": test[1]}
    np.savez_compressed(cfg.out / PREDICTIONS_FILE, allow_pickle=False, **arrays)
    plot_per_class(metrics, cfg.out / PLOT_FILE)
    return metrics


def _log_epoch(record: dict[str, Any]) -> None:
    text = (
        f"epoch {record['epoch']}: loss {record['train_loss']:.4f}, "
        f"train exit rate {[round(r, 3) for r in record['train_exit_rate']]}, "
        f"{record['train_seconds']:.1f} s"
    )
    if "val_ee_best" in record:
        text += (
            f"; val balanced top-1 per exit "
            f"{[round(a, 4) for a in record['val_exit_balanced_top1']]}"
            f", early exit best {record['val_ee_best']:.4f} "
            f"(FLOPs ratio {record['val_ee_best_flops_ratio']:.2f})"
        )
    log.info("%s", text)


def main(cfg: TrainConfig) -> dict[str, Any] | None:
    """Train (or resume), evaluate, write outputs; returns the final metrics on rank 0."""
    return train(cfg)[1]


def train(cfg: TrainConfig) -> tuple[MultiExitNet, dict[str, Any] | None]:
    """main, also returning this process's trained network (rank 0 alone gets the metrics)."""
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    _setup_threads(cfg, device)
    info = init_distributed(device)
    try:
        return _run(cfg, device, info)
    finally:
        cleanup(info)


def _train_epoch(
    run: _Run,
    ddp: nn.Module,
    loss_fn: MultiExitLoss,
    opt: tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler],
    *,
    epoch: int,
    info: DistInfo,
) -> dict[str, Any]:
    cfg = run.cfg
    loader = batches(
        run.splits.train,
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        epoch=epoch,
        info=info,
        workers=cfg.workers,
    )
    return train_one_epoch(
        ddp,
        loss_fn,
        opt[0],
        opt[1],
        loader,
        spec=run.spec,
        aug=cfg.augment,
        # Per epoch and rank, so a resumed run augments exactly as an uninterrupted one.
        generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 101 + info.rank),
        device=run.device,
        info=info,
        progress=cfg.progress,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
    )


def _run(
    cfg: TrainConfig, device: torch.device, info: DistInfo
) -> tuple[MultiExitNet, dict[str, Any] | None]:
    splits = build_splits(cfg.data)
    cfg = resolve_config(cfg, splits)
    ckpt_path = cfg.out / CHECKPOINT_FILE
    if info.is_main:
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.out / CONFIG_FILE).write_text(json.dumps(to_dict(cfg), indent=1))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device)
    per_stage = stage_flops(model, (splits.channels, splits.height, splits.width))
    # NHWC is faster for these convolutions, on CPU and on GPU.
    spec = InputSpec(splits.mean, splits.std, channels_last=True)
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    run = _Run(cfg, splits, model, spec, device, per_stage)
    steps = math.ceil(math.ceil(len(splits.train) / info.world_size) / cfg.batch_size)
    optimizer, scheduler = make_optimizer(model, cfg, steps)
    start = _maybe_resume(cfg, model, (optimizer, scheduler), device, info)
    ddp = wrap_model(model, info, device, find_unused=False)
    loss_fn = MultiExitLoss(cfg.loss, splits.train_class_counts, model.num_exits, cfg.epochs)
    extra: dict[str, Any] = {
        "data_info": _data_info(splits),
        "stage_flops": [list(s) for s in per_stage],
    }
    # Provenance for the export's manifest: how this run was started, and from which code.
    extra |= {"command": cfg.command, "commit": git_commit()}
    watch = FirstExitWatch()
    for epoch in range(start, cfg.epochs):
        loss_fn.set_epoch(epoch)
        record = _train_epoch(run, ddp, loss_fn, (optimizer, scheduler), epoch=epoch, info=info)
        if info.is_main:
            watch.update(epoch + 1, record["train_exit_rate"])
            record = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], **record}
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                record |= _validate(run)
            save_checkpoint(ckpt_path, model, optimizer, scheduler, epoch + 1, cfg, extra)
            with (cfg.out / HISTORY_FILE).open("a") as f:
                f.write(json.dumps(record) + "\n")
            _log_epoch(record)
        barrier(info)
    if not info.is_main:
        return model, None
    metrics = _finish(run)
    log.info("wrote %s", cfg.out)
    return model, metrics


def _maybe_resume(
    cfg: TrainConfig,
    model: nn.Module,
    opt: tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler],
    device: torch.device,
    info: DistInfo,
) -> int:
    """Epochs already done: from the checkpoint with --resume, else 0 (and a fresh history)."""
    path = cfg.out / CHECKPOINT_FILE
    if not (cfg.resume and path.is_file()):
        if info.is_main and (cfg.out / HISTORY_FILE).exists():
            (cfg.out / HISTORY_FILE).unlink()
        return 0
    state = load_checkpoint(path, map_location=device)
    unwrap(model).load_state_dict(state["model"])
    opt[0].load_state_dict(state["optimizer"])
    opt[1].load_state_dict(state["scheduler"])
    ignored = ("resume", "progress", "epochs", "command")
    saved = {k: v for k, v in state["config"].items() if k not in ignored}
    now = {k: v for k, v in to_dict(cfg).items() if k not in ignored}
    if saved != now:
        log.warning("resuming %s with a different config than it was saved with", path)
    log.info("resumed from %s after epoch %d", path, state["epoch"])
    return int(state["epoch"])
