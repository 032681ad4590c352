# ruff: noqa
# mypy: ignore-errors
"""One-off (issue 12, c=1): interleaved wrk points for several servers started up front.
usage: CONC="1 8 32" ROUNDS=3 DUR=6 python bench/results/http_c1/explore.py fastapi base: \
           LABEL:ELF_X=1,SRC=/path/to/tree,...   (run from the repo root, under bench_lock.sh)"""

import contextlib
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.getcwd())
from bench.http import elf_spec
from bench.servers import ServerSpec, python_module, running
from bench.wrk_run import run_wrk

model = Path("models/fashion-mnist-lt")
images = Path("runs/bench-http-logs/bundled-images.tsv")
conc = [int(c) for c in os.environ.get("CONC", "1").split()]
rounds, dur = int(os.environ.get("ROUNDS", "3")), float(os.environ.get("DUR", "6"))
configs = []
for arg in sys.argv[1:]:
    label, _, rest = arg.partition(":")
    if label == "fastapi":
        configs.append(
            (
                label,
                ServerSpec(
                    "fastapi",
                    python_module("bench.baselines.fastapi_app", "--model-dir", str(model)),
                    "/health",
                    {},
                ),
                "/predict",
            )
        )
        continue
    env = [kv for kv in rest.split(",") if kv]
    src = None
    for kv in list(env):
        if kv.startswith("SRC="):
            src = Path(kv[4:])
            env.remove(kv)
    spec = elf_spec("elf", model, env, None)
    if src is not None:
        spec.env["PYTHONPATH"] = str(src)
    spec = ServerSpec("elf-" + label, spec.argv, spec.ready_path, spec.env)
    configs.append((label, spec, "/v1/classify"))
res = {}
with contextlib.ExitStack() as stack:
    servers = [
        (l, stack.enter_context(running(s, Path("runs/explore-logs"), 120)), p)
        for l, s, p in configs
    ]
    for l, srv, p in servers:
        for c in conc:
            run_wrk(srv.url + p, images, "raw", c, 3)
    for r in range(rounds):
        for c in conc:
            for l, srv, p in servers:
                cpu0 = srv.cpu_seconds()
                w = run_wrk(srv.url + p, images, "raw", c, dur)
                cpu = srv.cpu_seconds() - cpu0
                res.setdefault((l, c), []).append(
                    (
                        w.throughput,
                        w.latency_ms["p50"],
                        w.latency_ms["p99"],
                        cpu * 1e3 / max(1, w.requests),
                    )
                )
for (l, c), v in res.items():
    a = np.array(v)
    med = np.median(a, axis=0)
    print(
        f"{l:28s} c={c:3d} req/s {med[0]:7.1f} p50 {med[1]:6.2f} p99 {med[2]:6.2f} cpu/req {med[3]:.2f}  | p99s "
        + " ".join(f"{x:.2f}" for x in a[:, 2]),
        flush=True,
    )
