"""Before/after of the engine's hot path: bench.runner at another commit and at this tree, in turn.

The other commit is exported with `git archive` into runs/ab/<commit>/ (its own server/ and
bench/, this tree's models and images), and `python -m bench.runner` runs there and here
alternately (`--rounds` times each, A B A B ...), so both see the same machine state. Each run's
`batcher` (deepest-first) and `batcher-age` (age-aware, the default) are compared through their
ratios to the same run's `stages` and "ideal by stage times", which cancels drift between runs.

    python -m bench.engine_ab --base 70109ea --models bundled --rounds 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.machine import git_commit

log = logging.getLogger("bench.engine_ab")


def export(commit: str, root: Path) -> Path:
    out = root / commit
    if not (out / "server").is_dir():
        out.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out


def run_runner(src: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    here = Path.cwd()
    cmd = [sys.executable, "-m", "bench.runner", "--models", *args.models, "--batch-sizes", "32"]
    cmd += ["--reps", str(args.reps), "--out", str(out.resolve())]
    cmd += ["--model-dir", str((here / args.model_dir).resolve())]
    cmd += ["--heavy-model-dir", str((here / args.heavy_model_dir).resolve())]
    cmd += ["--image-root", str((here / args.image_root).resolve())]
    env = os.environ | {"PYTHONPATH": str(src.resolve())}
    subprocess.run(cmd, cwd=src, env=env, check=True)
    return json.loads((out / "runner.json").read_text(encoding="utf-8"))


def batcher_row(result: dict[str, Any], model: str) -> dict[str, float]:
    """Both policies' batcher (deepest-first `batcher`, age-aware `age`) against the same run's
    stage chain, ideal by stage times and full.onnx."""
    m = next(m for m in result["models"] if m["model"] == model)
    rows = {r["variant"]: r for r in m["rows"] if r["batch"] == 32}
    st = rows["stages"]
    out: dict[str, float] = {}
    for variant, name in (("batcher", "batcher"), ("batcher-age", "age")):
        if variant not in rows:  # an older bench.runner without this variant
            continue
        b = rows[variant]
        out |= {
            f"{name}_ms": b["ms_per_image"],
            f"{name}_over_stage_ideal": b["ms_per_image"] / b["stage_time_ideal_ms_per_image"],
            f"{name}_over_stages": b["ms_per_image"] / st["ms_per_image"],
            f"{name}_saving_efficiency": b["saving_efficiency"],
            f"{name}_vs_full": b["time_vs_full"],
        }
    # The zero-overhead engine's time over full.onnx's in this run (the stage chain's noise).
    out["stage_ideal_vs_full"] = b["stage_time_ideal_ms_per_image"] / rows["full"]["ms_per_image"]
    return out


def pooled_ideal(runs: list[dict[str, Any]], model: str) -> float:
    """Ideal by stage times over full.onnx, pooled over every run of both trees (median): one
    tree's unlucky `stages` timing then moves neither tree's ratio."""
    return float(statistics.median(r[model]["stage_ideal_vs_full"] for r in runs))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the commit before the change")
    p.add_argument("--models", nargs="+", default=["bundled"], choices=["bundled", "heavy"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("bench/results/engine_ab.json"))
    p.add_argument("--model-dir", type=Path, default=Path("models/fashion-mnist-lt"))
    p.add_argument("--heavy-model-dir", type=Path, default=Path("runs/bench-models/resnet50-224"))
    p.add_argument("--image-root", type=Path, default=Path("runs/bench-images"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    base = export(args.base, Path("runs/ab"))
    trees = {f"base {args.base}": base, f"head {git_commit()}": Path.cwd()}
    got: dict[str, list[dict[str, Any]]] = {k: [] for k in trees}
    for i in range(args.rounds):
        for name, src in trees.items():
            res = run_runner(src, Path("runs/ab/out") / f"{name.split()[0]}-{i}", args)
            got[name].append({m: batcher_row(res, m) for m in args.models})
    summary = {
        name: {
            m: {k: round(statistics.median(r[m][k] for r in runs), 4) for k in runs[0][m]}
            for m in args.models
        }
        for name, runs in got.items()
    }
    result: dict[str, Any] = {
        "command": " ".join(["python -m bench.engine_ab", *(argv or sys.argv[1:])])
    }
    every = [r for runs in got.values() for r in runs]
    for name, runs in got.items():
        for m in args.models:
            ideal = pooled_ideal(every, m)
            summary[name][m]["stage_ideal_vs_full_pooled"] = round(ideal, 4)
            for v in ("batcher", "age"):
                key = f"{v}_vs_full"
                if key in runs[0][m]:
                    med = statistics.median(r[m][key] for r in runs)
                    summary[name][m][f"{v}_over_pooled_stage_ideal"] = round(med / ideal, 4)
    result |= {"rounds": args.rounds, "reps": args.reps, "summary": summary, "runs": got}
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    log.info("%s", json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
