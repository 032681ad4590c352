# ruff: noqa
# mypy: ignore-errors
"""One-off (issue 12, c=1): decode + stage 0 at batch 1 after no gap, a 2 ms sleep, a 2 ms busy wait.
usage: python bench/results/http_c1/micro3.py"""

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, ".")
from elf_core.manifest import Manifest
from server.preprocess import decode_image

d = Path("models/fashion-mnist-lt")

man = Manifest.model_validate_json((d / "manifest.json").read_text())
png = Path("runs/bench-images/fmnist-test-28-png-1000/test_00000.png").read_bytes()


def opts(threads):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return o


x = np.random.rand(1, 1, 28, 28).astype(np.float32)
S = {
    t: ort.InferenceSession(str(d / "stage_0.onnx"), opts(t), providers=["CPUExecutionProvider"])
    for t in (1, 2)
}


def busy(s):
    end = time.perf_counter() + s
    while time.perf_counter() < end:
        pass


for gapname, gapfn in (
    ("none", lambda: None),
    ("sleep2ms", lambda: time.sleep(0.002)),
    ("busy2ms", lambda: busy(0.002)),
):
    for t, s in S.items():
        a, b = [], []
        for i in range(600):
            gapfn()
            t0 = time.perf_counter()
            decode_image(png, man.preprocessing, 10**7)
            t1 = time.perf_counter()
            s.run(None, {"input": x})
            t2 = time.perf_counter()
            if i > 50:
                a.append(t1 - t0)
                b.append(t2 - t1)
        print(
            f"gap {gapname:9s} t{t}: decode p50 {np.median(a) * 1e3:.3f} | s0 p50 {np.median(b) * 1e3:.3f} p99 {np.percentile(b, 99) * 1e3:.3f}",
            flush=True,
        )
