"""FLOP counts (2 x multiply-adds of Conv2d and Linear) against hand counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from elf_core.flops import cumulative_flops, cumulative_flops_ratio, full_flops
from training.flops import count_flops, stage_flops
from training.networks import ModelConfig, MultiExitNet, build_model


def _tiny() -> MultiExitNet:
    def head(c: int) -> nn.Module:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 3))

    stages = [
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2), nn.ReLU()),
    ]
    return MultiExitNet(stages, [head(4), head(8)], num_classes=3)


def test_stage_flops_by_hand() -> None:
    per_stage = stage_flops(_tiny(), (1, 8, 8))
    # stage 0: 4x8x8 outputs, each 1*3*3 MACs; head 0: 4 -> 3 linear
    # stage 1: 8x4x4 outputs, each (4/2 groups)*3*3 MACs; head 1: 8 -> 3 linear
    body0, head0 = 2 * 4 * 8 * 8 * 9, 2 * 4 * 3
    body1, head1 = 2 * 8 * 4 * 4 * 2 * 9, 2 * 8 * 3
    assert per_stage == [(body0, head0), (body1, head1)]
    assert full_flops(per_stage) == body0 + body1 + head1
    assert cumulative_flops(per_stage) == [body0 + head0, body0 + head0 + body1 + head1]
    ratio = cumulative_flops_ratio(per_stage)
    assert ratio[0] == pytest.approx((body0 + head0) / (body0 + body1 + head1))
    assert ratio[1] > 1.0  # an image reaching the end also paid for the heads it passed


def test_count_flops_scales_with_batch() -> None:
    model = _tiny()
    one = count_flops(model, torch.zeros(1, 1, 8, 8))
    assert count_flops(model, torch.zeros(3, 1, 8, 8)) == 3 * one
    assert one == sum(b + h for b, h in stage_flops(model, (1, 8, 8)))


def test_resnet32_full_flops_by_formula() -> None:
    per_stage = stage_flops(build_model(ModelConfig(arch="resnet32")), (1, 28, 28))
    # stem 1->16 3x3 at 28x28; 10 convs 16->16 at 28x28; stage 2: 32x14x14 outputs, one conv
    # from 16 channels, 9 from 32, a 1x1 projection 16->32; stage 3 the same pattern at 7x7.
    s1 = 28 * 28 * 16 * (1 * 9 + 10 * 16 * 9)
    s2 = 14 * 14 * 32 * (16 * 9 + 9 * 32 * 9 + 16)
    s3 = 7 * 7 * 64 * (32 * 9 + 9 * 64 * 9 + 32)
    assert [b for b, _ in per_stage] == [2 * s1, 2 * s2, 2 * s3]
    assert [h for _, h in per_stage] == [2 * 16 * 10, 2 * 32 * 10, 2 * 64 * 10]
