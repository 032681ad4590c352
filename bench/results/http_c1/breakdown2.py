# ruff: noqa
# mypy: ignore-errors
"""One-off (issue 12, c=1): per-request timestamps of elf-serve at c=1 (sequential keep-alive client).
usage: SRC=/tmp/inst python bench/results/http_c1/breakdown2.py   where /tmp/inst is this tree
       with instrument.diff applied (git archive HEAD | tar -x -C /tmp/inst; patch -p1 < ...)"""

import http.client
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.getcwd())
from bench.http import elf_spec
from bench.servers import running

model = Path("models/fashion-mnist-lt")
imgs = [
    Path(l.split("\t")[0]).read_bytes()
    for l in Path("runs/bench-http-logs/bundled-images.tsv").read_text().splitlines()[:200]
]
env = [kv for kv in sys.argv[1:] if kv]
spec = elf_spec("elf", model, env, None)
spec.env["PYTHONPATH"] = os.environ["SRC"]
N = int(os.environ.get("N", "3000"))
with running(spec, Path("runs/explore-logs"), 120) as srv:
    host, port = srv.url.split("//")[1].split(":")
    c = http.client.HTTPConnection(host, int(port))
    rows = []
    for i in range(N):
        body = imgs[i % len(imgs)]
        t0 = time.perf_counter()
        c.request("POST", "/v1/classify", body=body, headers={"Content-Type": "image/png"})
        r = c.getresponse()
        data = r.read()
        t1 = time.perf_counter()
        j = json.loads(data)
        st = j["st"]
        e = j["results"][0]["exit"]["index"]
        if i < 300:
            continue
        runs = st["runs"]
        d = {
            "rtt": t1 - t0,
            "mw->start": st["start"] - st["mw"],
            "read": st["read"] - st["start"],
            "decode": st["dec"] - st["read"],
            "dec->enq": st["enq"] - st["dec"],
            "enq->take": st["take"] - st["enq"],
            "take->run0": runs[0][1] - st["take"],
            "run0": runs[0][2] - runs[0][1],
            "run0->deliver" if e == 0 else "run0->run1": (st["deliver"] if e == 0 else runs[1][1])
            - runs[0][2],
            "deliver->resolve": st["resolve"] - st["deliver"],
            "resolve->cls": st["cls"] - st["resolve"],
            "exit": e,
        }
        if e >= 1:
            d["run1"] = runs[1][2] - runs[1][1]
            d["run1->deliver"] = (st["deliver"] if e == 1 else runs[2][1]) - runs[1][2]
        rows.append(d)
for e in (0, 1):
    sub = [r for r in rows if r["exit"] == e]
    keys = [k for k in sub[0] if k != "exit"]
    print(
        f"exit {e} n={len(sub)} "
        + "  ".join(f"{k} {np.median([r[k] for r in sub]) * 1e3:.3f}" for k in keys)
    )
    print(
        "   p99:  "
        + "  ".join(f"{k} {np.percentile([r[k] for r in sub], 99) * 1e3:.3f}" for k in keys)
    )
