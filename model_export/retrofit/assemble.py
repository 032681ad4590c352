"""Stage graphs of a retrofitted model: original-graph segments joined to exported exit heads.

Stage k < K-1: input -> (features, logits): the original graph from the previous cut (or its
input) to cut k, plus exit head k on cut k. The last stage: input -> logits, the original graph
from the last cut to its output. full.onnx: the original graph, input -> logits.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx
from onnx import compose, utils, version_converter

from model_export.graphs import BATCH_DIM, GraphFile, StageGraphs, export_graph
from model_export.onnx_flops import node_flops
from model_export.retrofit.cuts import Classifier, Cut, RetrofitError, _dims, _opset, _set_dims
from model_export.retrofit.heads import ExitHead

FULL_FILE = "full.onnx"


def rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename tensor `old` to `new` everywhere in `graph` (no subgraphs: cuts.py refuses them)."""
    if old == new:
        return
    names = {t for n in graph.node for t in [*n.input, *n.output]} | {
        v.name for v in [*graph.input, *graph.output, *graph.initializer]
    }
    if new in names:
        raise RetrofitError(f"cannot rename {old!r} to {new!r}: the graph already has {new!r}")
    for node in graph.node:
        node.input[:] = [new if t == old else t for t in node.input]
        node.output[:] = [new if t == old else t for t in node.output]
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.name == old:
            vi.name = new


def _batch_axis(model: onnx.ModelProto) -> onnx.ModelProto:
    """Dim 0 of every graph input and output is the symbolic `batch`."""
    for vi in [*model.graph.input, *model.graph.output]:
        dims = _dims(vi)
        _set_dims(vi, [BATCH_DIM, *dims[1:]])
    return model


def segment(clf: Classifier, start: str, end: str) -> onnx.ModelProto:
    """The original graph between tensors `start` and `end` (onnx.utils.Extractor)."""
    return utils.Extractor(clf.model).extract_model([start], [end])


def _same_versions(a: onnx.ModelProto, b: onnx.ModelProto) -> onnx.ModelProto:
    """`b` converted to `a`'s opset (heads are exported at OPSET <= a's) and IR version."""
    if _opset(b) != _opset(a):
        b = version_converter.convert_version(b, _opset(a))
    ir = max(a.ir_version, b.ir_version)
    a.ir_version = b.ir_version = ir
    return b


def _one_opset_per_domain(model: onnx.ModelProto) -> None:
    """merge_models lists a domain once per input model; tools such as ONNX Runtime's quantiser
    refuse a graph that imports the default domain twice."""
    versions: dict[str, int] = {}
    for o in model.opset_import:
        domain = "" if o.domain == "ai.onnx" else o.domain
        versions[domain] = max(versions.get(domain, 0), o.version)
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in versions.items())


def stage_with_exit(
    seg: onnx.ModelProto, head: onnx.ModelProto, cut: str, k: int
) -> onnx.ModelProto:
    head = _same_versions(seg, head)
    prefix = f"exit{k}_"
    merged = compose.merge_models(
        seg, head, io_map=[(cut, "input")], prefix2=prefix, outputs=[cut, f"{prefix}logits"]
    )
    _one_opset_per_domain(merged)
    rename(merged.graph, merged.graph.input[0].name, "input")
    rename(merged.graph, cut, "features")
    rename(merged.graph, f"{prefix}logits", "logits")
    return _batch_axis(merged)


def last_stage(seg: onnx.ModelProto) -> onnx.ModelProto:
    rename(seg.graph, seg.graph.input[0].name, "input")
    rename(seg.graph, seg.graph.output[0].name, "logits")
    return _batch_axis(seg)


def _save(model: onnx.ModelProto, path: Path) -> None:
    onnx.save(model, str(path))


def _last_layer_split(seg: onnx.ModelProto, where: str) -> tuple[int, int]:
    """(FLOPs before the last counted node, FLOPs of that node: the final classifier)."""
    flops = node_flops(seg, where)
    last = max(i for i, f in enumerate(flops) if f > 0)
    return sum(flops) - flops[last], flops[last]


def build_stage_graphs(
    clf: Classifier, cuts: Sequence[Cut], heads: Sequence[ExitHead], out_dir: Path
) -> StageGraphs:
    """stage_0.onnx .. stage_{K-1}.onnx and full.onnx into out_dir, with their FLOPs."""
    bounds = [clf.input_name, *(c.tensor for c in cuts), clf.output_name]
    stages: list[GraphFile] = []
    per_stage: list[tuple[int, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(len(cuts) + 1):
            seg = segment(clf, bounds[k], bounds[k + 1])
            path = out_dir / f"stage_{k}.onnx"
            if k < len(cuts):
                head_path = Path(tmp) / f"exit_{k}.onnx"
                export_graph(heads[k].eval(), cuts[k].shape, head_path, ["logits"])
                head = onnx.load(str(head_path))
                per_stage.append(
                    (sum(node_flops(seg, f"segment {k}")), sum(node_flops(head, head_path.name)))
                )
                _save(stage_with_exit(seg, head, cuts[k].tensor, k), path)
                stages.append(GraphFile(path.name, ["input"], ["features", "logits"]))
            else:
                per_stage.append(_last_layer_split(seg, f"segment {k}"))
                _save(last_stage(seg), path)
                stages.append(GraphFile(path.name, ["input"], ["logits"]))
    full = onnx.ModelProto()
    full.CopyFrom(clf.model)
    del full.graph.value_info[:]
    _save(last_stage(full), out_dir / FULL_FILE)
    # per_stage: for the last stage, (segment without its last Conv/Gemm/MatMul, that layer =
    # the final classifier), counted on the ONNX graphs.
    return StageGraphs(stages, GraphFile(FULL_FILE, ["input"], ["logits"]), per_stage)
