"""Multi-exit networks: the contract the export and the server rely on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.networks import VARIANTS, ModelConfig, MultiExitNet, build_model, num_parameters


@pytest.mark.parametrize(
    ("arch", "channels", "size", "exits"),
    [("resnet8", 1, 28, 3), ("resnet32", 3, 32, 3), ("resnet50", 3, 64, 4)],
)
def test_forward_returns_every_exit(arch: str, channels: int, size: int, exits: int) -> None:
    cfg = ModelConfig(arch=arch, num_classes=7, in_channels=channels, width_mult=0.25)
    model = build_model(cfg).eval()
    assert isinstance(model.stages, nn.ModuleList) and isinstance(model.exits, nn.ModuleList)
    assert len(model.stages) == len(model.exits) == exits == model.num_exits
    out = model(torch.randn(2, channels, size, size))
    assert [tuple(z.shape) for z in out] == [(2, 7)] * exits
    # Running the stages by hand gives the same logits (what the per-stage export relies on).
    x = torch.randn(1, channels, size, size)
    feats, manual = x, []
    for stage, head in zip(model.stages, model.exits, strict=True):
        feats = stage(feats)
        manual.append(head(feats))
    for a, b in zip(model(x), manual, strict=True):
        torch.testing.assert_close(a, b)


def test_resnet32_layout() -> None:
    model = build_model(ModelConfig(arch="resnet32"))
    # stage 0: the stem and 5 blocks; stages 1 and 2: 5 blocks each
    assert [len(list(s.children())) for s in model.stages] == [6, 5, 5]
    x = torch.zeros(1, 1, 28, 28)
    shapes = []
    for stage in model.stages:
        x = stage(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(16, 28, 28), (32, 14, 14), (64, 7, 7)]
    assert 0.45e6 < num_parameters(model) < 0.5e6


def test_head_and_classifier_choices() -> None:
    plain = build_model(ModelConfig(arch="resnet8"))
    conv = build_model(ModelConfig(arch="resnet8", head="conv_pool_linear"))
    # Only the two auxiliary heads get a 3x3 conv (+BN): 16*16*9+32 and 32*32*9+64 parameters.
    assert num_parameters(conv) - num_parameters(plain) == 16 * 16 * 9 + 32 + 32 * 32 * 9 + 64
    cosine = build_model(ModelConfig(arch="resnet8", classifier="cosine", cosine_scale=5.0))
    with torch.no_grad():
        logits = cosine(torch.randn(4, 1, 16, 16))
    assert all(float(z.abs().max()) <= 5.0 + 1e-4 for z in logits)


def test_invalid_config_names_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown arch"):
        ModelConfig(arch="vgg")
    with pytest.raises(ValueError, match="head"):
        ModelConfig(head="mlp")
    with pytest.raises(ValueError, match="2 stages but 1 exits"):
        MultiExitNet([nn.Identity(), nn.Identity()], [nn.Identity()], 3)
    assert set(VARIANTS) >= {"resnet32", "resnet50"}
