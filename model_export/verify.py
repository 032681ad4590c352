"""Checks an export must pass before a manifest is written: ONNX checker, single-file graphs with a
symbolic batch axis, batches of several sizes, parity with torch on every exit, and full.onnx as
the backbone alone (one output: the final exit's logits)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from elf_core.manifest import TensorSpec
from model_export.onnx_flops import count_onnx_flops
from model_export.runtime import StageChain, session
from training.flops import stage_flops
from training.networks import MultiExitNet

MIN_OPSET = 17
PARITY_ATOL = 1e-4
BATCH_SIZES = (1, 3, 64)

log = logging.getLogger(__name__)


class VerificationError(RuntimeError):
    """The exported graphs do not do what the torch model does; the message names the file."""


@dataclass(frozen=True)
class ParityReport:
    stage_max_abs_diff: list[float]  # per exit: chained stage graphs vs torch
    full_max_abs_diff: float  # full.onnx vs torch's final exit
    images: int

    @property
    def max_abs_diff(self) -> float:
        return max(*self.stage_max_abs_diff, self.full_max_abs_diff)


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [
        d.dim_param if d.HasField("dim_param") else int(d.dim_value)
        for d in vi.type.tensor_type.shape.dim
    ]


def check_graph(path: Path) -> tuple[TensorSpec, list[TensorSpec]]:
    """ONNX checker, opset, single file, dim 0 symbolic everywhere; returns (input, outputs)."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise VerificationError(f"{path}: ONNX checker failed: {exc}") from exc
    model = onnx.load(str(path), load_external_data=False)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        raise VerificationError(f"{path}: opset {opset} < {MIN_OPSET}")
    external = [
        t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    if external:
        raise VerificationError(f"{path}: weights stored outside the file: {external[:3]}")
    specs = []
    for vi in [*model.graph.input, *model.graph.output]:
        dims = _dims(vi)
        if not dims or not isinstance(dims[0], str) or not dims[0]:
            raise VerificationError(f"{path}: {vi.name} has no symbolic batch axis (shape {dims})")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name
        if dtype not in ("float32", "float16"):
            raise VerificationError(f"{path}: {vi.name} has dtype {dtype}")
        specs.append(TensorSpec(name=vi.name, shape=dims, dtype=dtype))  # type: ignore[arg-type]
    if len(model.graph.input) != 1:
        raise VerificationError(f"{path}: expected one input, found {len(model.graph.input)}")
    return specs[0], specs[1:]


def check_full_graph(path: Path) -> TensorSpec:
    """check_graph, and full.onnx is the backbone alone: one output, the final exit's logits
    (an auxiliary exit head in it would cost more than the manifest's flops_full)."""
    _, outputs = check_graph(path)
    if len(outputs) != 1:
        names = [o.name for o in outputs]
        raise VerificationError(
            f"{path}: expected one output (the final exit's logits), found {len(outputs)}: {names}"
        )
    return outputs[0]


def check_batch_sizes(
    stage_paths: Sequence[Path], full_path: Path, input_shape: tuple[int, ...], num_classes: int
) -> None:
    """Batches of 1, 3 and 64 run through the chained stages (logits per exit) and full.onnx (the
    final logits) with matching dim 0."""
    runner = StageChain(stage_paths)
    full = session(full_path, ["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for b in BATCH_SIZES:
        x = rng.standard_normal((b, *input_shape)).astype(np.float32)
        for name, outs in (("stages", runner(x)), (full_path.name, full.run(None, {"input": x}))):
            shapes = [tuple(o.shape) for o in outs]
            if any(s != (b, num_classes) for s in shapes):
                raise VerificationError(
                    f"{name}: batch of {b} gave logits of shapes {shapes}, "
                    f"expected ({b}, {num_classes}) per logits output"
                )


def check_parity(
    net: MultiExitNet,
    stage_paths: Sequence[Path],
    full_path: Path,
    x: np.ndarray,
    *,
    relative: bool = False,
) -> ParityReport:
    """Chained stage graphs (every exit) and full.onnx (the final exit) vs the torch model on x
    (normalized [N, C, H, W]).

    relative: each exit's difference is divided by max(1, its largest |logit|) (for logits far
    from unit scale, e.g. closed-form fitted heads, where an absolute 1e-4 is too tight)."""
    param = next(net.parameters())
    with torch.no_grad():
        ref = [t.float().cpu().numpy() for t in net.eval()(torch.from_numpy(x).to(param.device))]
    staged = StageChain(stage_paths)(x)
    (full,) = session(full_path, ["CPUExecutionProvider"]).run(None, {"input": x})
    scale = [max(1.0, float(np.abs(r).max())) if relative else 1.0 for r in ref]

    def max_diffs(outs: Sequence[np.ndarray]) -> list[float]:
        return [float(np.abs(a - r).max()) / s for a, r, s in zip(outs, ref, scale, strict=True)]

    report = ParityReport(
        stage_max_abs_diff=max_diffs(staged),
        full_max_abs_diff=float(np.abs(full - ref[-1]).max()) / scale[-1],
        images=int(x.shape[0]),
    )
    for label, diffs, where in (
        ("stage graphs", report.stage_max_abs_diff, stage_paths[-1].parent),
        ("full graph", [report.full_max_abs_diff], full_path),
    ):
        exits = range(len(ref))[-len(diffs) :]  # full.onnx: the final exit only
        bad = [(k, d) for k, d in zip(exits, diffs, strict=True) if not d <= PARITY_ATOL]
        if bad:
            raise VerificationError(
                f"{where}: {label} differ from torch beyond {PARITY_ATOL} "
                f"(exit, max abs diff): {bad}"
            )
    log.info("parity on %d images: max abs diff %.2e", report.images, report.max_abs_diff)
    return report


@dataclass(frozen=True)
class FlopsReport:
    per_stage: list[tuple[int, int]]  # training.flops: (body, exit head) per stage, per image
    onnx_stage: list[int]  # independent count of each stage graph (body + head)
    onnx_full: int  # independent count of full.onnx (every stage body, the final classifier)

    @property
    def max_rel_diff(self) -> float:
        torch_counts = [b + h for b, h in self.per_stage]
        backbone = sum(b for b, _ in self.per_stage) + self.per_stage[-1][1]  # flops_full
        pairs = [*zip(torch_counts, self.onnx_stage, strict=True), (backbone, self.onnx_full)]
        return max(abs(o - t) / max(t, 1) for t, o in pairs)


def check_flops(
    net: MultiExitNet,
    input_shape: tuple[int, int, int],
    stage_paths: Sequence[Path],
    full_path: Path,
    rel_tol: float = 0.02,
) -> FlopsReport:
    """FLOPs from training.flops (the numbers the manifest records), cross-checked against a count
    of the ONNX graphs' Conv/Gemm/MatMul nodes."""
    report = FlopsReport(
        per_stage=stage_flops(net, input_shape),
        onnx_stage=[count_onnx_flops(p) for p in stage_paths],
        onnx_full=count_onnx_flops(full_path),
    )
    if report.max_rel_diff > rel_tol:
        raise VerificationError(
            f"{full_path.parent}: FLOPs of the ONNX graphs {report.onnx_stage} (full "
            f"{report.onnx_full}) differ from training.flops {report.per_stage} by "
            f"{report.max_rel_diff:.1%} (> {rel_tol:.0%})"
        )
    log.info("FLOPs cross-check: max relative difference %.3f%%", 100 * report.max_rel_diff)
    return report
