"""The CPU merge in numpy against the merge graph, in one process: bursts alternate between the
two (OnnxStageRunner.host_merge True / False) on the same sessions and images, so the machine's
drift hits both alike. Per burst (bench.engine_overhead's age-aware burst at batch 32): wall,
time in stage runs (all, and stages >= 1, which read merged batches), time in merges; medians in
ms/image.

    python -m bench.engine_merge_ab --bursts 24
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys

from bench.engine_overhead import burst
from bench.runner import add_model_args, cases, load_case

log = logging.getLogger("bench.engine_merge_ab")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bursts", type=int, default=24, help="in all, alternating (2 warm first)")
    add_model_args(p)
    args = p.parse_args(argv)
    args.models, args.quick, args.stand_in, args.reps = ["bundled"], False, False, 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    key, model_dir, images, _ = cases(args)[0]
    case = load_case(key, model_dir, images, list(range(1, 33)), [32])
    case.runner.host_merge = False
    case.runner.warm_up([1, 32])  # the merge graph, as the server warms it where it is used
    parts = ("wall", "stage_runs", "stage_runs_k_ge_1", "merges")
    got: dict[str, list[list[float]]] = {"host": [], "graph": []}
    for i in range(args.bursts + 2):
        name = "host" if i % 2 == 0 else "graph"
        case.runner.host_merge = name == "host"
        wall, calls, _ = burst(case, 32)
        if i < 2:
            continue
        runs = [(k, s) for kind, k, _, s in calls if kind == "run"]
        merges = sum(s for kind, _, _, s in calls if kind == "merge")
        deep = sum(s for k, s in runs if k >= 1)
        got[name].append([wall, sum(s for _, s in runs), deep, merges])
    n = len(case.x)
    summary = {
        name: {
            p: round(1e3 * statistics.median(v[j] for v in vals) / n, 4)
            for j, p in enumerate(parts)
        }
        for name, vals in got.items()
    }
    result = {
        "command": " ".join(["python -m bench.engine_merge_ab", *sys.argv[1:]]),
        "summary_ms_per_image": summary,
        "bursts_s": got,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine_merge_ab.json").write_text(json.dumps(result, indent=1) + "\n")
    log.info("%s", json.dumps(summary))


if __name__ == "__main__":
    main()
