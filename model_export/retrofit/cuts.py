"""The user's ONNX classifier: validation, cut-point analysis and the choice of cuts.

A cut is an intermediate tensor that separates the graph: every path from the input to the
output runs through it, so the graph before it and the graph after it are two models whose
chain is the original. Only 4-D activations [batch, C, H, W] are cuts (the exit heads are
convolutional), and some layer with weights must follow a cut.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import shape_inference, version_converter

from model_export.graphs import BATCH_DIM, OPSET
from model_export.onnx_flops import OnnxFlopsError, node_flops

log = logging.getLogger(__name__)

Shape = tuple[int, int, int]  # per image: (C, H, W)
MAX_AUTO_CUT = 0.95  # automatic cuts lie at most this far into the backbone's FLOPs


class RetrofitError(ValueError):
    """A model, cut or data set that cannot be retrofitted; the message says why."""


@dataclass(frozen=True)
class Classifier:
    """The user's model with a fixed per-image input shape and inferred intermediate shapes."""

    path: Path
    model: onnx.ModelProto  # opset >= OPSET, input [batch, C, H, W], shapes inferred
    input_name: str
    output_name: str
    input_shape: Shape
    num_classes: int
    node_flops: list[int]  # per node, graph order
    shapes: dict[str, list[int | str]]  # tensor -> inferred shape

    @property
    def total_flops(self) -> int:
        return sum(self.node_flops)


@dataclass(frozen=True)
class Cut:
    tensor: str
    shape: Shape
    cumulative_flops: int  # FLOPs of the original graph before this tensor


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [
        d.dim_param if d.HasField("dim_param") else int(d.dim_value)
        for d in vi.type.tensor_type.shape.dim
    ]


def _set_dims(vi: onnx.ValueInfoProto, dims: Sequence[int | str]) -> None:
    shape = vi.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def load_classifier(
    path: Path, channels: int | None = None, size: tuple[int, int] | None = None
) -> Classifier:
    """Load `path` and check it is an image classifier: one 4-D input, one 2-D output."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # the protobuf parser raises several types
        raise RetrofitError(f"{path}: not a readable ONNX model ({exc})") from exc
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    outs = model.graph.output
    if len(inputs) != 1 or len(_dims(inputs[0])) != 4:
        raise RetrofitError(
            f"{path}: not an image classifier: needs one 4-D input [batch, C, H, W], found "
            f"{[(vi.name, _dims(vi)) for vi in inputs]}"
        )
    if len(outs) != 1 or len(_dims(outs[0])) != 2:
        raise RetrofitError(
            f"{path}: not a classifier: needs a single 2-D output [batch, classes], found "
            f"{[(vi.name, _dims(vi)) for vi in outs]}"
        )
    dims = _dims(inputs[0])
    c = channels if channels is not None else dims[1]
    hw = size if size is not None else (dims[2], dims[3])
    if not all(isinstance(d, int) and d > 0 for d in (c, *hw)):
        raise RetrofitError(
            f"{path}: input {inputs[0].name} has shape {dims}; give --channels and --image-size"
        )
    for given, have, flag in ((c, dims[1], "--channels"), (hw[0], dims[2], "--image-size")):
        if isinstance(have, int) and have > 0 and have != given:
            raise RetrofitError(f"{path}: {flag} {given} does not match the model's input {dims}")
    _set_dims(inputs[0], [BATCH_DIM, int(c), int(hw[0]), int(hw[1])])
    if _opset(model) < OPSET:
        # The exit heads are exported at OPSET; both halves of a stage graph need one opset.
        model = version_converter.convert_version(model, OPSET)
    try:
        model = shape_inference.infer_shapes(model, strict_mode=True)
        flops = node_flops(model, str(path))
    except (onnx.shape_inference.InferenceError, OnnxFlopsError) as exc:
        raise RetrofitError(f"{path}: shape inference failed: {exc}") from exc
    g = model.graph
    shapes = {vi.name: _dims(vi) for vi in [*g.input, *g.value_info, *g.output]}
    n_out = shapes[outs[0].name][1]
    if not isinstance(n_out, int) or n_out < 2:
        raise RetrofitError(f"{path}: output {outs[0].name} has no fixed class count: {n_out}")
    return Classifier(
        path=path,
        model=model,
        input_name=inputs[0].name,
        output_name=outs[0].name,
        input_shape=(int(c), int(hw[0]), int(hw[1])),
        num_classes=n_out,
        node_flops=flops,
        shapes=shapes,
    )


class GraphIndex:
    """Producers and ancestors of the classifier's tensors (ONNX nodes are topologically sorted)."""

    def __init__(self, clf: Classifier) -> None:
        self.clf = clf
        self.nodes = list(clf.model.graph.node)
        self.producer = {out: i for i, n in enumerate(self.nodes) for out in n.output}
        self.order = {t: i for t, i in self.producer.items()}

    def ancestors(self, tensor: str) -> set[int]:
        """Indices of the nodes that `tensor` depends on (including its producer)."""
        seen: set[int] = set()
        stack = [tensor]
        while stack:
            i = self.producer.get(stack.pop())
            if i is None or i in seen:
                continue
            seen.add(i)
            stack.extend(self.nodes[i].input)
        return seen

    def crossing(self, tensor: str, before: set[int]) -> list[str]:
        """Tensors other than `tensor` made before it (or the input) and used after it."""
        inp = self.clf.input_name
        out = []
        for i, node in enumerate(self.nodes):
            if i in before:
                continue
            for t in node.input:
                if t and t != tensor and (t == inp or self.producer.get(t) in before):
                    out.append(t)
        return sorted(set(out))

    def cut(self, tensor: str) -> Cut:
        """`tensor` as a cut, or a RetrofitError saying why it is not one."""
        where = f"{self.clf.path}: cut {tensor!r}"
        if tensor == self.clf.input_name:
            raise RetrofitError(f"{where} is the model's input")
        if tensor not in self.producer:
            raise RetrofitError(f"{where} does not exist in the graph (no node outputs it)")
        before = self.ancestors(tensor)
        out_anc = self.ancestors(self.clf.output_name)
        if self.producer[tensor] not in out_anc:
            raise RetrofitError(f"{where} does not separate the graph: the output does not use it")
        if before == out_anc:
            raise RetrofitError(f"{where} is after the last layer (it is the output)")
        after = out_anc - before
        if sum(self.clf.node_flops[i] for i in after) == 0:
            raise RetrofitError(f"{where} is after the last layer (no Conv/Gemm/MatMul follows it)")
        crossing = self.crossing(tensor, before)
        if crossing:
            raise RetrofitError(
                f"{where} does not separate the graph: {crossing[:3]} also cross from before "
                "it to after it (e.g. a skip connection); cut at a block's output"
            )
        dims = self.clf.shapes.get(tensor, [])
        if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
            raise RetrofitError(f"{where} is not a 4-D activation [batch, C, H, W]: shape {dims}")
        shape = (int(dims[1]), int(dims[2]), int(dims[3]))
        return Cut(tensor, shape, sum(self.clf.node_flops[i] for i in before))

    def candidates(self) -> list[Cut]:
        """Every tensor that is a cut, in graph order."""
        found = []
        for node in self.nodes:
            for t in node.output:
                try:
                    found.append(self.cut(t))
                except RetrofitError:
                    continue
        return found


def stage_ends(cands: Sequence[Cut]) -> list[Cut]:
    """The last cut at each spatial resolution (a downsampling stage's output), except the last
    resolution, whose end is the backbone's final feature map."""
    return [
        c
        for c, nxt in itertools.pairwise(cands)
        if nxt.shape[1] * nxt.shape[2] < c.shape[1] * c.shape[2]
    ]


def block_ends(cands: Sequence[Cut]) -> list[Cut]:
    """Of each run of cuts with the same FLOPs before them (a residual block's sum and the
    activation after it), the last: the block outputs, finer than the stage ends."""
    return [c for c, nxt in itertools.pairwise(cands) if nxt.cumulative_flops > c.cumulative_flops]


def spread(ends: Sequence[Cut], n: int, total_flops: int) -> list[Cut]:
    """n of `ends` (in order) whose cumulative FLOPs lie nearest to total * j / (n + 1)."""
    if len(ends) <= n:
        return list(ends)
    chosen: list[Cut] = []
    rest = list(ends)
    for j in range(1, n + 1):
        if not rest:
            break
        target = total_flops * j / (n + 1)
        # Leave enough cuts for the targets still to come.
        pool = rest[: len(rest) - (n - j)] or rest
        best = min(pool, key=lambda c: abs(c.cumulative_flops - target))
        chosen.append(best)
        rest = rest[rest.index(best) + 1 :]
    return chosen


def auto_cuts(ends: Sequence[Cut], n: int, total_flops: int, where: Path) -> list[Cut]:
    """n stage ends spread evenly in FLOPs, among those within MAX_AUTO_CUT of the FLOPs: an
    exit at the end of the last stage would cost the whole backbone and its own head, more than
    the final exit it is meant to spare (e.g. resnet32's 7x7 map just before the pool)."""
    useful = [c for c in ends if c.cumulative_flops <= MAX_AUTO_CUT * total_flops]
    if not useful:
        raise RetrofitError(
            f"{where}: every stage end found lies past {MAX_AUTO_CUT:.0%} of the FLOPs; name "
            "cuts with --cuts"
        )
    return spread(useful, n, total_flops)


def choose_cuts(clf: Classifier, names: Sequence[str] | None, num_exits: int) -> list[Cut]:
    """The user's named cuts (checked, put in graph order) or `num_exits` automatic ones."""
    index = GraphIndex(clf)
    if names:
        if len(set(names)) != len(names):
            raise RetrofitError(f"{clf.path}: a cut is named twice: {list(names)}")
        cuts = [index.cut(t) for t in names]
        return sorted(cuts, key=lambda c: index.order[c.tensor])
    cands = index.candidates()
    ends = stage_ends(cands)
    if len([c for c in ends if c.cumulative_flops <= MAX_AUTO_CUT * clf.total_flops]) < num_exits:
        # More exits than stage ends: images may also leave inside a stage.
        ends = block_ends(cands)
    if not ends:
        raise RetrofitError(
            f"{clf.path}: no downsampling stage ends found to cut at; name cuts with --cuts"
        )
    cuts = auto_cuts(ends, num_exits, clf.total_flops, clf.path)
    log.info(
        "automatic cuts (of %d candidates): %s",
        len(ends),
        ", ".join(
            f"{c.tensor} {c.shape} at {c.cumulative_flops / clf.total_flops:.0%}" for c in cuts
        ),
    )
    return cuts
