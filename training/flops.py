"""FLOP counting: FLOPs = 2 x multiply-adds of every Conv2d and Linear actually run.

Bias additions, BatchNorm, activations and pooling are not counted (the usual convention, and
the one the manifest states). What the per-stage counts add up to (backbone, cumulative per exit,
an exit mix's mean) is elf_core.flops.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.networks import MultiExitNet


def _layer_flops(module: nn.Module, out: Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        # Every output element is a dot product over (C_in / groups) x kh x kw inputs.
        kh, kw = module.kernel_size
        macs = out.numel() * (module.in_channels // module.groups) * kh * kw
    elif isinstance(module, nn.Linear):
        macs = out.numel() * module.in_features
    else:
        return 0
    return 2 * macs


def count_flops(module: nn.Module, x: Tensor) -> int:
    """FLOPs of `module(x)` for the batch given (use batch 1 for per-image numbers)."""
    total = 0

    def hook(mod: nn.Module, _inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        total += _layer_flops(mod, out)

    handles = [
        m.register_forward_hook(hook)
        for m in module.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return total


def stage_flops(model: MultiExitNet, input_shape: tuple[int, int, int]) -> list[tuple[int, int]]:
    """Per stage k: (body FLOPs, exit-head FLOPs) for one image of shape (C, H, W)."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    x = torch.zeros((1, *input_shape), dtype=param.dtype, device=param.device)
    result: list[tuple[int, int]] = []
    try:
        with torch.no_grad():
            for stage, head in zip(model.stages, model.exits, strict=True):
                body = count_flops(stage, x)
                x = stage(x)
                result.append((body, count_flops(head, x)))
    finally:
        model.train(was_training)
    return result
