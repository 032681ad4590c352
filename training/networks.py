"""Multi-exit ResNets: blocks, exit head, network, builder, public variants.

The network only computes every exit's logits; the early-exit decision belongs to the trainer's
loss, the evaluation and the server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------
# Blocks


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; a 1x1 projection when the shape changes."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = _conv_bn(c_in, width, 3, stride)
        self.conv2 = _conv_bn(width, c_out, 3)
        self.shortcut: nn.Module = (
            _conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.conv1(x))
        return F.relu(self.conv2(out) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4, with a residual."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = _conv_bn(c_in, width, 1)
        self.conv2 = _conv_bn(width, width, 3, stride)
        self.conv3 = _conv_bn(width, c_out, 1)
        self.shortcut: nn.Module = (
            _conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        return F.relu(self.conv3(out) + self.shortcut(x))


BlockType = type[BasicBlock] | type[Bottleneck]

# ---------------------------------------------------------------------------------------------
# Exit head


class CosineLinear(nn.Linear):
    """scale * cos(feature, class weight): the normalised classifier LDAM is trained with.

    A subclass of nn.Linear so FLOP counting sees it as the linear layer it costs.
    """

    def __init__(self, in_features: int, out_features: int, scale: float) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


class ExitHead(nn.Module):
    """features [B, C, H, W] -> logits [B, num_classes]: optional conv, global pool, classifier."""

    def __init__(
        self, channels: int, num_classes: int, conv: bool, classifier: str, scale: float
    ) -> None:
        super().__init__()
        self.conv: nn.Module = (
            nn.Sequential(_conv_bn(channels, channels, 3), nn.ReLU()) if conv else nn.Identity()
        )
        self.fc: nn.Linear = (
            CosineLinear(channels, num_classes, scale)
            if classifier == "cosine"
            else nn.Linear(channels, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(self.conv(x), 1).flatten(1)  # [B, C]
        return self.fc(pooled)


# ---------------------------------------------------------------------------------------------
# Network


class MultiExitNet(nn.Module):
    """K stages, one exit after each; exits[K-1] is the ordinary final classifier."""

    def __init__(
        self, stages: Sequence[nn.Module], exits: Sequence[nn.Module], num_classes: int
    ) -> None:
        super().__init__()
        if len(stages) != len(exits):
            raise ValueError(f"{len(stages)} stages but {len(exits)} exits")
        self.stages = nn.ModuleList(stages)
        self.exits = nn.ModuleList(exits)
        self.num_classes = num_classes

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def forward(self, x: Tensor) -> list[Tensor]:
        logits: list[Tensor] = []
        for stage, head in zip(self.stages, self.exits, strict=True):
            x = stage(x)
            logits.append(head(x))
        return logits


# ---------------------------------------------------------------------------------------------
# Builder


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet32"
    num_classes: int = 10
    in_channels: int = 1
    # Auxiliary exit heads: "pool_linear" (global pool + classifier) or "conv_pool_linear"
    # (3x3 conv + BN + ReLU first). The final exit is always pool + classifier.
    head: str = "pool_linear"
    # "linear", or "cosine" (scale * cosine similarity; LDAM's normalised classifier).
    classifier: str = "linear"
    cosine_scale: float = 30.0
    # Multiplies every stage's channel width (a small model for tests: 0.25).
    width_mult: float = 1.0

    def __post_init__(self) -> None:
        if self.arch not in VARIANTS:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {sorted(VARIANTS)}")
        if self.head not in ("pool_linear", "conv_pool_linear"):
            raise ValueError(f"unknown head {self.head!r}; use pool_linear or conv_pool_linear")
        if self.classifier not in ("linear", "cosine"):
            raise ValueError(f"unknown classifier {self.classifier!r}; use linear or cosine")
        if self.num_classes < 2 or self.in_channels < 1 or self.width_mult <= 0:
            raise ValueError("num_classes >= 2, in_channels >= 1 and width_mult > 0 are required")


@dataclass(frozen=True)
class _Spec:
    block: BlockType
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    imagenet_stem: bool  # 7x7 stride-2 conv + max pool (224 px); else one 3x3 conv (28-32 px)


def _stem(cfg: ModelConfig, spec: _Spec, c_out: int) -> nn.Module:
    if spec.imagenet_stem:
        return nn.Sequential(
            _conv_bn(cfg.in_channels, c_out, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1)
        )
    return nn.Sequential(_conv_bn(cfg.in_channels, c_out, 3), nn.ReLU())


def _build(cfg: ModelConfig, spec: _Spec) -> MultiExitNet:
    widths = [max(1, round(w * cfg.width_mult)) for w in spec.widths]
    c_in = widths[0]
    stages: list[nn.Module] = []
    exits: list[nn.Module] = []
    for k, (depth, width) in enumerate(zip(spec.depths, widths, strict=True)):
        layers: list[nn.Module] = [_stem(cfg, spec, c_in)] if k == 0 else []
        for i in range(depth):
            stride = 2 if k > 0 and i == 0 else 1
            layers.append(spec.block(c_in, width, stride))
            c_in = width * spec.block.expansion
        stages.append(nn.Sequential(*layers))
        last = k == len(spec.depths) - 1
        conv = cfg.head == "conv_pool_linear" and not last
        exits.append(ExitHead(c_in, cfg.num_classes, conv, cfg.classifier, cfg.cosine_scale))
    net = MultiExitNet(stages, exits, cfg.num_classes)
    _init_weights(net)
    return net


def _init_weights(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    # Zero-init the last BN of every residual branch: each block starts as the identity.
    for m in net.modules():
        last = m.conv2 if isinstance(m, BasicBlock) else getattr(m, "conv3", None)
        if isinstance(m, BasicBlock | Bottleneck) and isinstance(last, nn.Sequential):
            bn = last[1]
            assert isinstance(bn, nn.BatchNorm2d)
            nn.init.zeros_(bn.weight)


def build_model(cfg: ModelConfig) -> MultiExitNet:
    return VARIANTS[cfg.arch](cfg)


# ---------------------------------------------------------------------------------------------
# Public variants


def _cifar_resnet(blocks_per_stage: int) -> Callable[[ModelConfig], MultiExitNet]:
    spec = _Spec(BasicBlock, (blocks_per_stage,) * 3, (16, 32, 64), imagenet_stem=False)
    return lambda cfg: _build(cfg, spec)


def resnet50(cfg: ModelConfig) -> MultiExitNet:
    """ResNet-50 layout (3-4-6-3 bottlenecks) with exits after stages 1-3; for 224 px."""
    return _build(cfg, _Spec(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), imagenet_stem=True))


VARIANTS: dict[str, Callable[[ModelConfig], MultiExitNet]] = {
    "resnet8": _cifar_resnet(1),  # tiny, for tests
    "resnet20": _cifar_resnet(3),
    "resnet32": _cifar_resnet(5),
    "resnet56": _cifar_resnet(9),
    "resnet50": resnet50,
}


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "VARIANTS",
    "ExitHead",
    "ModelConfig",
    "MultiExitNet",
    "build_model",
    "num_parameters",
    "resnet50",
]
