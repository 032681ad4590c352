# ruff: noqa
# mypy: ignore-errors
"""One-off (issue 12, c=1): stage 0/1 at batch 1, session options, with a gap (ms) between runs.
usage: python bench/results/http_c1/micro2.py GAP_MS"""

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

d = Path("models/fashion-mnist-lt")


def opts(threads, spin, stop=False):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    f = "1" if spin else "0"
    o.add_session_config_entry("session.intra_op.allow_spinning", f)
    o.add_session_config_entry("session.inter_op.allow_spinning", f)
    if stop:
        o.add_session_config_entry("session.force_spinning_stop", "1")
    return o


x = np.random.rand(1, 1, 28, 28).astype(np.float32)
gap = float(sys.argv[1]) / 1e3
configs = [
    ("t2 nospin", 2, False, False),
    ("t2 spin", 2, True, False),
    ("t2 spin+stop", 2, True, True),
    ("t1", 1, False, False),
]
sess = {}
for name, th, spin, stop in configs:
    ss = [
        ort.InferenceSession(
            str(d / f"stage_{k}.onnx"), opts(th, spin, stop), providers=["CPUExecutionProvider"]
        )
        for k in range(3)
    ]
    sess[name] = ss
h = [x]
for s in sess["t1"]:
    h.append(s.run(None, {s.get_inputs()[0].name: h[-1]})[0])
res = {n: [[], []] for n in sess}
for rnd in range(6):
    for name, ss in sess.items():
        names = [s.get_inputs()[0].name for s in ss]
        for i in range(150):
            t = time.perf_counter()
            ss[0].run(None, {names[0]: h[0]})
            t1 = time.perf_counter()
            ss[1].run(None, {names[1]: h[1]})
            t2 = time.perf_counter()
            if i >= 10:
                res[name][0].append(t1 - t)
                res[name][1].append(t2 - t1)
            time.sleep(gap)
for name, (a, b) in res.items():
    a, b = np.array(a) * 1e3, np.array(b) * 1e3
    print(
        f"gap {gap * 1e3:.1f}ms {name:14s} s0 p50 {np.median(a):.3f} p99 {np.percentile(a, 99):.3f} | s1 p50 {np.median(b):.3f} p99 {np.percentile(b, 99):.3f}",
        flush=True,
    )
