"""Does a stage graph's time move with ONNX Runtime's session options? Per stage, at batch 32.

Each stage graph (and full.onnx) is timed with graph optimisation levels basic / extended / all
(`all` adds the layout transformation to NCHWc blocked tensors on x86, which every stage graph
then pays at its input and output), and intra-op threads 1 and all CPUs; the stage's input is
the previous stage's features from the server's own sessions. Variants interleaved, medians.

    python -m bench.stage_options --models bundled          # bench/results/stage_options.{json,md}
    python -m bench.stage_options --models heavy --reps 3   # adds the heavy model (~4 min)
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench import machine
from bench.runner import add_model_args, cases, load_case
from bench.stage_precision_report import merge_result
from server.settings import available_cpus

log = logging.getLogger("bench.stage_options")

LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session(path: Path, level: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = LEVELS[level]
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def stage_inputs(case: Any, b: int) -> list[np.ndarray]:
    """Stage k's input at batch b: the image batch, then each stage's features (host copies)."""
    h = case.runner.to_device(case.x[:b])
    inputs = [case.x[:b]]
    for k in range(case.runner.num_stages - 1):
        h, _ = case.runner.run(k, h)
        inputs.append(np.asarray(h.numpy()))
    return inputs


def measure(case: Any, b: int, reps: int, calls: int) -> list[dict[str, Any]]:
    m = case.manifest
    graphs = [(f"stage {k}", case.model_dir / s.file, s.input.name) for k, s in enumerate(m.stages)]
    graphs.append(("full", case.model_dir / m.full_model.file, "input"))
    inputs = [*stage_inputs(case, b), case.x[:b]]
    variants = [(lv, t) for lv in LEVELS for t in sorted({1, available_cpus()})]
    rows = []
    for (name, path, input_name), x in zip(graphs, inputs, strict=True):
        sessions = {v: session(path, *v) for v in variants}
        times: dict[tuple[str, int], list[float]] = {v: [] for v in variants}
        for s in sessions.values():
            s.run(None, {input_name: x})
        for rep in range(reps):
            for v in variants[rep % len(variants) :] + variants[: rep % len(variants)]:
                t0 = time.perf_counter()
                for _ in range(calls):
                    sessions[v].run(None, {input_name: x})
                times[v].append((time.perf_counter() - t0) / calls / b)
        for (level, threads), ts in times.items():
            ms = 1e3 * statistics.median(ts)
            rows.append({"graph": name, "level": level, "threads": threads, "ms_per_image": ms})
        log.info("%s %s done", case.key, name)
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Stage graphs' time against ONNX Runtime session options (bench/stage_options.py)",
        "",
    ]
    for m in result["models"]:
        variants = sorted({(r["level"], r["threads"]) for r in m["rows"]})
        graphs = list(dict.fromkeys(r["graph"] for r in m["rows"]))
        ms = {(r["graph"], r["level"], r["threads"]): r["ms_per_image"] for r in m["rows"]}
        lines += [
            f"## {m['model']}: batch {m['batch']}, {m['reps']} repetitions of {m['calls']} calls, "
            "ms per image (median)",
            "",
            "| graph | " + " | ".join(f"{lv}, {t} thr" for lv, t in variants) + " |",
            "|---|" + "---:|" * len(variants),
        ]
        lines[-2:-2] = [f"Command: `{m['command']}`", "", machine.markdown(m["machine"]), ""]
        for g in graphs:
            cells = [f"{ms[(g, lv, t)]:.4f}" for lv, t in variants]
            lines.append(f"| {g} | " + " | ".join(cells) + " |")
        stages = [g for g in graphs if g != "full"]
        total = {v: sum(ms[(g, *v)] for g in stages) for v in variants}
        lines.append("| stages sum | " + " | ".join(f"{total[v]:.4f}" for v in variants) + " |")
        ratio = [f"{total[v] / ms[('full', *v)]:.3f}" for v in variants]
        lines += ["| stages sum / full | " + " | ".join(ratio) + " |", ""]
        best = [min(variants, key=lambda v: ms[(g, *v)]) for g in stages]
        t_best = sum(ms[(g, *v)] for g, v in zip(stages, best, strict=True))
        lines += [
            "Fastest setting per stage: "
            + ", ".join(f"{g} {lv}/{t} thr" for g, (lv, t) in zip(stages, best, strict=True))
            + f"; stages sum with each at its fastest {t_best:.4f} ms/image.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["bundled"], choices=["bundled", "heavy"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    add_model_args(p)
    args = p.parse_args(argv)
    args.quick, args.stand_in = False, True
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "stage_options.json"
    for key, model_dir, images, _ in cases(args):
        facts = machine.facts()
        case = load_case(key, model_dir, images, [args.batch], [args.batch])
        calls = 20 if key == "bundled" else 1
        rows = measure(case, args.batch, args.reps, calls)
        entry: dict[str, Any] = {"model": key, "command": machine.command_line()}
        entry["machine"] = facts
        entry |= {"batch": args.batch, "reps": args.reps, "calls": calls, "rows": rows}
        result = merge_result(path, entry)  # the other model's entry stays
        path.write_text(json.dumps(result, indent=1) + "\n")
        (args.out / "stage_options.md").write_text(markdown(result), encoding="utf-8")


if __name__ == "__main__":
    main()
