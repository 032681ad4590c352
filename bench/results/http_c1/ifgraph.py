# ruff: noqa
# mypy: ignore-errors
"""One-off (issue 12, c=1), run from the repo root: python bench/results/http_c1/ifgraph.py
Prototype: the bundled model's exit chain as one ONNX graph with If nodes (batch 1), timed
against the three stage sessions (cold: a 2 ms sleep between requests)."""

import sys, time
from pathlib import Path
import numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto, compose

d = Path("models/fashion-mnist-lt")
st = [compose.add_prefix(onnx.load(str(d / f"stage_{k}.onnx")), f"s{k}_").graph for k in range(3)]
F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def out(name, t):
    return helper.make_tensor_value_info(name, t, ["b", 10] if t == F else [])


def exit_test(k):  # nodes: cond_k = max softmax(s{k}_logits) < thr[k]
    return [
        helper.make_node("Softmax", [f"s{k}_logits"], [f"p{k}"], axis=1),
        helper.make_node("ReduceMax", [f"p{k}"], [f"m{k}"], keepdims=0),
        helper.make_node("Gather", ["thr", f"idx{k}"], [f"t{k}"], axis=0),
        helper.make_node("Less", [f"m{k}", f"t{k}"], [f"c{k}"]),
    ]


def leaf(k, logits):
    return helper.make_graph(
        [
            helper.make_node("Identity", [logits], [f"lo_{k}"]),
            helper.make_node(
                "Constant", [], [f"ex_{k}"], value=helper.make_tensor("v", I64, [], [k])
            ),
        ],
        f"exit{k}",
        [],
        [out(f"lo_{k}", F), out(f"ex_{k}", I64)],
    )


def cont(k):  # run stage k on s{k-1}_features, then exit test / next
    nodes = [helper.make_node("Identity", [f"s{k - 1}_features"], [f"s{k}_input"]), *st[k].node]
    if k == 2:
        nodes += [
            helper.make_node("Identity", ["s2_logits"], ["lo_c2"]),
            helper.make_node(
                "Constant", [], ["ex_c2"], value=helper.make_tensor("v", I64, [], [2])
            ),
        ]
        return helper.make_graph(nodes, "stage2", [], [out("lo_c2", F), out("ex_c2", I64)])
    nodes += exit_test(k)
    nodes.append(
        helper.make_node(
            "If",
            [f"c{k}"],
            [f"lo_c{k}", f"ex_c{k}"],
            then_branch=cont(k + 1),
            else_branch=leaf(k, f"s{k}_logits"),
        )
    )
    return helper.make_graph(nodes, f"stage{k}", [], [out(f"lo_c{k}", F), out(f"ex_c{k}", I64)])


nodes = [
    *st[0].node,
    *exit_test(0),
    helper.make_node(
        "If", ["c0"], ["logits", "exit"], then_branch=cont(1), else_branch=leaf(0, "s0_logits")
    ),
]
inits = [i for g in st for i in g.initializer] + [
    helper.make_tensor(f"idx{k}", I64, [], [k]) for k in range(2)
]
g = helper.make_graph(
    nodes,
    "chain",
    [st[0].input[0], helper.make_tensor_value_info("thr", F, [2])],
    [out("logits", F), out("exit", I64)],
    initializer=inits,
)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
onnx.checker.check_model(m)


def opts():
    o = ort.SessionOptions()
    o.intra_op_num_threads = 2
    o.inter_op_num_threads = 1
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return o


chain = ort.InferenceSession(m.SerializeToString(), opts(), providers=["CPUExecutionProvider"])
stages = [
    ort.InferenceSession(str(d / f"stage_{k}.onnx"), opts(), providers=["CPUExecutionProvider"])
    for k in range(3)
]
x = np.random.rand(1, 1, 28, 28).astype(np.float32)


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def run_stages(thr):
    h = x
    for k, s in enumerate(stages):
        o = s.run(None, {"input": h})
        if k == 2 or softmax(o[-1]).max() >= thr[k]:
            return o[-1], k
        h = o[0]


for thr, want in (
    (np.array([0.0, 0.0], np.float32), 0),
    (np.array([2.0, 0.0], np.float32), 1),
    (np.array([2.0, 2.0], np.float32), 2),
):
    lo, ex = chain.run(None, {"s0_input": x, "thr": thr})
    ref, k = run_stages(thr)
    assert int(ex) == k == want and np.allclose(lo, ref, atol=1e-5), (ex, k)
    a, b = [], []
    for i in range(400):
        time.sleep(0.002)
        t0 = time.perf_counter()
        chain.run(None, {"s0_input": x, "thr": thr})
        t1 = time.perf_counter()
        time.sleep(0.002)
        t2 = time.perf_counter()
        run_stages(thr)
        t3 = time.perf_counter()
        if i > 30:
            a.append(t1 - t0)
            b.append(t3 - t2)
    print(
        f"exit {want}: one If-graph run p50 {np.median(a) * 1e3:.3f} p99 {np.percentile(a, 99) * 1e3:.3f} | stage sessions p50 {np.median(b) * 1e3:.3f} p99 {np.percentile(b, 99) * 1e3:.3f}",
        flush=True,
    )
full_default = ort.InferenceSession(str(d / "full.onnx"), providers=["CPUExecutionProvider"])
full_nospin = ort.InferenceSession(str(d / "full.onnx"), opts(), providers=["CPUExecutionProvider"])
for name, s in (
    ("full.onnx, ORT defaults (the FastAPI peer)", full_default),
    ("full.onnx, 2 threads no spinning", full_nospin),
):
    a = []
    for i in range(400):
        time.sleep(0.002)
        t0 = time.perf_counter()
        s.run(None, {"input": x})
        t1 = time.perf_counter()
        if i > 30:
            a.append(t1 - t0)
    print(f"{name}: p50 {np.median(a) * 1e3:.3f} p99 {np.percentile(a, 99) * 1e3:.3f}", flush=True)
