"""Torch side of the export: per-stage wrapper modules and their ONNX export (dynamic batch axis).

Stage k < K-1: input [batch, ...] -> (features [batch, ...], logits [batch, num_classes]);
the last stage: input -> logits; full.onnx: the backbone alone (every stage body and the final
classifier, no auxiliary exit head), input -> logits: what `exit=final` serves in one call.
Exported with the dynamo exporter (torch.export + onnxscript) into single-file graphs.
`TorchGraphs` is export's graph step for a trained network (model_export.export.write_model_dir):
these graphs, checked for parity with torch and by the FLOPs cross-check.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from model_export.verify import FlopsReport, ParityReport, check_flops, check_parity
from training.flops import stage_flops
from training.networks import MultiExitNet

OPSET = 18
EXPORT_BATCH = 2  # >= 2, so no dimension of size 1 gets specialised into the graph
BATCH_DIM = "batch"

log = logging.getLogger(__name__)


class StageWithExit(nn.Module):
    """stages[k] followed by exits[k]: x -> (features_k, logits_k)."""

    def __init__(self, stage: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.stage = stage
        self.head = head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.stage(x)
        return features, self.head(features)


class LastStage(nn.Module):
    """The last stage and the final classifier: x -> logits."""

    def __init__(self, stage: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.stage = stage
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stage(x))


class Backbone(nn.Module):
    """Every stage, then the final classifier: x -> the final exit's logits (no auxiliary head
    runs, so the graph costs the manifest's flops_full)."""

    def __init__(self, net: MultiExitNet) -> None:
        super().__init__()
        self.stages = net.stages
        self.head = net.exits[-1]

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


@dataclass(frozen=True)
class GraphFile:
    file: str  # relative to the model directory
    inputs: list[str]
    outputs: list[str]


@dataclass(frozen=True)
class StageGraphs:
    """What a graph step wrote into a model directory: stage_0..K-1.onnx, full.onnx, and per
    stage the per-image FLOPs (body, exit head) that the manifest records."""

    stages: list[GraphFile]
    full: GraphFile
    per_stage: list[tuple[int, int]]


def stage_modules(net: MultiExitNet) -> list[nn.Module]:
    """One eval-mode module per stage, sharing the network's weights."""
    k = len(net.stages)
    mods: list[nn.Module] = [
        StageWithExit(net.stages[i], net.exits[i])
        if i < k - 1
        else LastStage(net.stages[i], net.exits[i])
        for i in range(k)
    ]
    return [m.eval() for m in mods]


def stage_input_shapes(net: MultiExitNet, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Per stage, the per-image input shape (without batch): the image, then each feature map."""
    param = next(net.parameters())
    x = torch.zeros((1, *input_shape), dtype=param.dtype, device=param.device)
    shapes: list[tuple[int, ...]] = []
    with torch.no_grad():
        for stage in net.stages:
            shapes.append(tuple(x.shape[1:]))
            x = stage(x)
    return shapes


def export_graph(
    module: nn.Module, per_image_shape: tuple[int, ...], path: Path, outputs: list[str]
) -> GraphFile:
    """Export `module` (eval mode) to a single-file ONNX graph with a symbolic batch axis."""
    param = next(module.parameters())
    example = torch.randn((EXPORT_BATCH, *per_image_shape), dtype=param.dtype, device=param.device)
    batch = torch.export.Dim(BATCH_DIM, min=1)
    # The exporter prints its progress on stdout and warns about missing torchvision ops.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            dynamo=True,
            external_data=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=outputs,
            dynamic_shapes={"x": {0: batch}},
        )
    log.info("exported %s", path.name)
    return GraphFile(file=path.name, inputs=["input"], outputs=outputs)


def export_graphs(
    net: MultiExitNet, input_shape: tuple[int, int, int], out_dir: Path
) -> tuple[list[GraphFile], GraphFile]:
    """stage_0.onnx .. stage_{K-1}.onnx and full.onnx into out_dir."""
    net = net.eval()
    k = len(net.stages)
    shapes = stage_input_shapes(net, input_shape)
    stages = []
    for i, (mod, shape) in enumerate(zip(stage_modules(net), shapes, strict=True)):
        outputs = ["features", "logits"] if i < k - 1 else ["logits"]
        stages.append(export_graph(mod, shape, out_dir / f"stage_{i}.onnx", outputs))
    full = export_graph(Backbone(net).eval(), input_shape, out_dir / "full.onnx", ["logits"])
    return stages, full


@dataclass(frozen=True)
class TorchChecks:
    parity: ParityReport
    flops: FlopsReport


@dataclass(frozen=True)
class TorchGraphs:
    """A trained MultiExitNet (eval mode, CPU): graphs by torch's exporter; parity with torch on
    `parity_inputs` (normalized [N, C, H, W]) and the FLOPs cross-check."""

    net: MultiExitNet
    input_shape: tuple[int, int, int]
    parity_inputs: np.ndarray
    relative_parity: bool = False

    def write(self, model_dir: Path) -> StageGraphs:
        stages, full = export_graphs(self.net, self.input_shape, model_dir)
        return StageGraphs(stages, full, stage_flops(self.net, self.input_shape))

    def verify(self, model_dir: Path, graphs: StageGraphs) -> TorchChecks:
        paths, full = [model_dir / g.file for g in graphs.stages], model_dir / graphs.full.file
        parity = check_parity(
            self.net, paths, full, self.parity_inputs, relative=self.relative_parity
        )
        return TorchChecks(parity, check_flops(self.net, self.input_shape, paths, full))
