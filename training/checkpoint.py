"""Checkpoints: state dicts and plain JSON-able values only, loaded with weights_only=True."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.config import TrainConfig, from_dict, to_dict
from training.networks import ModelConfig, MultiExitNet, build_model

CHECKPOINT_FILE = "checkpoint.pt"


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (or the model itself)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def save_checkpoint(  # noqa: PLR0917 (one argument per part of the checkpoint)
    path: Path | str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    epoch: int,
    cfg: TrainConfig,
    extra: dict[str, Any],
) -> None:
    """Write atomically (temporary file, then rename): a crash never leaves half a checkpoint.

    `epoch` is the number of epochs completed.
    """
    state: dict[str, Any] = {
        **extra,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "config": to_dict(cfg),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path} is not a training checkpoint (needs 'model' and 'config')")
    return state


def load_model(path: Path | str) -> tuple[MultiExitNet, dict[str, Any]]:
    """The network rebuilt from the checkpoint's config, weights loaded, in eval mode (CPU)."""
    state = load_checkpoint(path)
    config: dict[str, Any] = state["config"]
    model = build_model(from_dict(ModelConfig, config["model"]))
    model.load_state_dict(state["model"])
    model.eval()
    return model, config


def load_train_config(config: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a checkpoint's (or config.json's) plain dict."""
    return from_dict(TrainConfig, config)
