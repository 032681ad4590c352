"""Before/after of the engine's own overhead: bench.engine_overhead at another commit and here.

The stage graphs' speed drifts by +-15% between sub-second samples on a shared 2-CPU machine, so
the ratio of a burst to "ideal by stage times" is noisy run to run; the engine's own time (what
the burst spends outside the stage runs: merges, the batcher's work, waits) is not. This runs
`python -m bench.engine_overhead` (this tree's copy, in both trees: the same instrument) on the
commit `--base` (exported as bench.engine_ab does) and on this tree, alternately, and reports the
medians of each part per tree, and "ideal + engine": the ratio the burst would have if its stage
runs took their isolated times (burst - stage_slower_in_burst over ideal).

    python -m bench.engine_overhead_ab --base 6101569 --rounds 3 --reps 4
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.engine_ab import export
from bench.machine import git_commit

log = logging.getLogger("bench.engine_overhead_ab")


def run(src: Path, out: Path, args: argparse.Namespace) -> list[dict[str, float]]:
    here = Path.cwd()
    cmd = [sys.executable, "-m", "bench.engine_overhead", "--models", "bundled"]
    cmd += ["--reps", str(args.reps), "--out", str(out.resolve())]
    cmd += ["--model-dir", str((here / args.model_dir).resolve())]
    cmd += ["--image-root", str((here / args.image_root).resolve())]
    env = os.environ | {"PYTHONPATH": str(src.resolve())}
    subprocess.run(cmd, cwd=src, env=env, check=True, capture_output=True)
    result = json.loads((out / "engine_overhead.json").read_text(encoding="utf-8"))
    bursts: list[dict[str, float]] = result["models"][0]["burst_all"]
    return bursts


def summarise(bursts: list[dict[str, float]]) -> dict[str, float]:
    med = {k: round(statistics.median(b[k] for b in bursts), 4) for k in bursts[0]}
    engine = [(b["burst"] - b["stage_slower_in_burst"]) / b["ideal_by_stage_times"] for b in bursts]
    ratio = [b["burst"] / b["ideal_by_stage_times"] for b in bursts]
    return med | {
        "ratio_to_ideal": round(statistics.median(ratio), 4),
        "ideal_plus_engine_ratio": round(statistics.median(engine), 4),
        "bursts": len(bursts),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the commit before the change")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--model-dir", type=Path, default=Path("models/fashion-mnist-lt"))
    p.add_argument("--image-root", type=Path, default=Path("runs/bench-images"))
    p.add_argument("--out", type=Path, default=Path("bench/results/engine_overhead_ab.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    base = export(args.base, Path("runs/ab"))
    shutil.copy(Path(__file__), base / "bench" / "engine_overhead_ab.py")
    shutil.copy(Path(__file__).with_name("engine_overhead.py"), base / "bench")
    trees = {f"base {args.base}": base, f"head {git_commit()}": Path.cwd()}
    got: dict[str, list[dict[str, float]]] = {k: [] for k in trees}
    for i in range(args.rounds):
        for name, src in trees.items():
            got[name] += run(src, Path("runs/ab/overhead") / f"{name.split()[0]}-{i}", args)
            log.info("round %d: %s done", i + 1, name)
    summary = {name: summarise(b) for name, b in got.items()}
    result: dict[str, Any] = {
        "command": " ".join(["python -m bench.engine_overhead_ab", *(argv or sys.argv[1:])])
    }
    result |= {"rounds": args.rounds, "reps": args.reps, "summary": summary, "bursts": got}
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    log.info("%s", json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
