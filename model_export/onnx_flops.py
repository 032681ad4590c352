"""An independent FLOP count of an ONNX graph: Conv, Gemm and MatMul nodes after shape inference.

FLOPs = 2 x multiply-adds per image (the batch axis is left out), the same convention as
training.flops, but computed from the exported graph rather than from torch modules, so the two
cross-check each other.
"""

from __future__ import annotations

import math
from pathlib import Path

import onnx
from onnx import shape_inference

COUNTED_OPS = ("Conv", "Gemm", "MatMul")


class OnnxFlopsError(ValueError):
    """A node whose shapes shape inference could not resolve."""


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Every tensor name -> shape; symbolic dims as their name (e.g. "batch")."""
    inferred = shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    shapes: dict[str, list[int | str]] = {t.name: list(t.dims) for t in g.initializer}
    for vi in [*g.input, *g.value_info, *g.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in dims]
    for node in g.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(attr.t.dims)
    return shapes


def _per_image(shape: list[int | str], where: str) -> int:
    """Product of the dims after the batch axis; every one must be known."""
    rest = shape[1:]
    if any(not isinstance(d, int) or d <= 0 for d in rest):
        raise OnnxFlopsError(f"{where}: unresolved shape {shape}")
    return math.prod(int(d) for d in rest)


def _node_macs(node: onnx.NodeProto, shapes: dict[str, list[int | str]]) -> int:
    try:
        out = shapes[node.output[0]]
        a = shapes[node.input[0]]
        b = shapes[node.input[1]]
    except KeyError as exc:
        raise OnnxFlopsError(f"{node.op_type} node {node.name!r}: no shape for {exc}") from exc
    where = f"{node.op_type} node {node.name!r}"
    if node.op_type == "Conv":
        # weight [C_out, C_in / groups, kh, kw]: each output element is one dot product over it.
        return _per_image(out, where) * math.prod(int(d) for d in b[1:])
    if node.op_type == "Gemm":
        trans_a = any(a_.name == "transA" and a_.i for a_ in node.attribute)
        k = a[0] if trans_a else a[-1]
        return _per_image(out, where) * int(k)
    # MatMul: [..., M, K] x [K, N]; K is the inner dimension of A.
    return _per_image(out, where) * int(a[-1])


def node_flops(model: onnx.ModelProto, where: str = "graph") -> list[int]:
    """Per-image FLOPs (2 x MACs) of each node of `model`, in graph order (0 for uncounted ops)."""
    shapes = _shapes(model)
    flops = []
    for node in model.graph.node:
        if node.op_type in ("If", "Loop", "Scan"):
            raise OnnxFlopsError(f"{where}: control flow node {node.op_type} is not supported")
        flops.append(2 * _node_macs(node, shapes) if node.op_type in COUNTED_OPS else 0)
    return flops


def count_onnx_flops(path: str | Path) -> int:
    """Per-image FLOPs (2 x MACs) of every Conv, Gemm and MatMul node in the graph at `path`."""
    return sum(node_flops(onnx.load(str(path)), str(path)))
