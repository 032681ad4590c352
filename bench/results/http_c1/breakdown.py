# ruff: noqa
# mypy: ignore-errors
"""One-off (issue 12, c=1): client round trip and the answer's own timings by exit, elf-serve of this tree.
usage: python bench/results/http_c1/breakdown.py   (run from the repo root, under bench_lock.sh)"""

import contextlib, http.client, json, os, sys, time
from pathlib import Path
import numpy as np

sys.path.insert(0, os.getcwd())
from bench.servers import ServerSpec, running
from bench.http import elf_spec

model = Path("models/fashion-mnist-lt")
imgs = [
    Path(l.split("\t")[0]).read_bytes()
    for l in Path("runs/bench-http-logs/bundled-images.tsv").read_text().splitlines()[:200]
]
env = [kv for kv in sys.argv[1:] if kv]
spec = elf_spec("elf", model, env, None)
if "SRC" in os.environ:  # serve another tree (a prototype)
    spec.env["PYTHONPATH"] = os.environ["SRC"]
with running(spec, Path("runs/explore-logs"), 120) as srv:
    host, port = srv.url.split("//")[1].split(":")
    c = http.client.HTTPConnection(host, int(port))
    rows = []
    for i in range(3000):
        body = imgs[i % len(imgs)]
        t0 = time.perf_counter()
        c.request("POST", "/v1/classify", body=body, headers={"Content-Type": "image/png"})
        r = c.getresponse()
        data = r.read()
        rtt = (time.perf_counter() - t0) * 1e3
        t = json.loads(data)["results"][0]
        if i >= 300:
            rows.append(
                (
                    rtt,
                    t["timings"]["total_ms"],
                    t["timings"]["queue_ms"],
                    t["timings"]["compute_ms"],
                    t["exit"]["index"],
                )
            )
a = np.array(rows)
for name, col in (("client rtt", 0), ("handler total", 1), ("queue", 2), ("compute", 3)):
    print(
        f"{name:14s} p50 {np.median(a[:, col]):.3f} mean {a[:, col].mean():.3f} p99 {np.percentile(a[:, col], 99):.3f}"
    )
for e in range(3):
    s = a[a[:, 4] == e]
    if len(s):
        print(
            f"exit {e}: n={len(s)} rtt p50 {np.median(s[:, 0]):.3f} total {np.median(s[:, 1]):.3f} queue {np.median(s[:, 2]):.3f} compute {np.median(s[:, 3]):.3f}"
        )
