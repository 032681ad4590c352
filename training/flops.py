"""FLOP counting: FLOPs = 2 x multiply-adds of every Conv2d and Linear actually run.

Bias additions, BatchNorm, activations and pooling are not counted (the usual convention, and
the one the manifest states).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from training.models import MultiExitNet


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


def full_flops(per_stage: Sequence[tuple[int, int]]) -> int:
    """The backbone alone: every stage body plus the final classifier, no auxiliary heads."""
    return sum(body for body, _ in per_stage) + per_stage[-1][1]


def cumulative_flops(per_stage: Sequence[tuple[int, int]]) -> list[int]:
    """Cost of an image leaving at exit k: stage bodies and exit heads 0..k."""
    out: list[int] = []
    running = 0
    for body, head in per_stage:
        running += body + head
        out.append(running)
    return out


def cumulative_flops_ratio(per_stage: Sequence[tuple[int, int]]) -> list[float]:
    """cumulative_flops / full_flops; the last entry is slightly above 1 (the heads passed)."""
    full = full_flops(per_stage)
    return [c / full for c in cumulative_flops(per_stage)]
