"""Where the batcher's worker thread spends its time under load: a py-spy sampling profile.

Runs `python -m bench.engine_load --what policy` (closed loop, one policy, one repetition)
under `py-spy record --idle --threads --format raw`, keeps the samples of the batcher's worker
thread (stacks through `Batcher._loop`) and of the event-loop thread (the submitters and the
futures' callbacks), and groups each sample by its innermost Python frame:

  onnxruntime   inside an ONNX Runtime call (the C++ kernels; py-spy sees the Python frame that
                called them, and ORT's own thread pool is not a Python thread)
  numpy         numpy functions (softmax, concatenation, stacking)
  waiting       the worker waiting on its condition (no batch ready), or the loop polling
  python        everything else: the batcher's own bookkeeping, asyncio, futures

    python -m bench.engine_profile --models bundled      # bench/results/engine_profile_*.{json,md}
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.engine_profile")

GROUPS = (("onnxruntime/", "onnxruntime"), ("numpy/", "numpy"))
WAITS = ("wait (threading.py", "select (selectors.py", "_run_once (asyncio/base_events.py")


def frame_file(frame: str) -> str:
    return frame[frame.rfind("(") + 1 :]


def group(leaf: str) -> str:
    if any(w in leaf for w in WAITS) or leaf.startswith(("wait (", "select (")):
        return "waiting"
    for needle, name in GROUPS:
        if needle in leaf:
            return name
    return "python"


def parse(raw: str) -> dict[str, list[tuple[list[str], int]]]:
    """Samples of the batcher thread and of the event-loop thread: [(frames root first, n)]."""
    out: dict[str, list[tuple[list[str], int]]] = {"batcher": [], "event loop": []}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")[1:]  # [0] is "thread (tid)"
        if not frames or not count.isdigit():
            continue
        joined = ";".join(frames)
        if "_loop (" in joined and "batching/batcher.py" in joined:
            out["batcher"].append((frames, int(count)))
        elif "run_until_complete" in joined:
            out["event loop"].append((frames, int(count)))
    return out


def summarise(samples: list[tuple[list[str], int]], top: int = 12) -> dict[str, Any]:
    total = sum(n for _, n in samples) or 1
    groups: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, n in samples:
        groups[group(frames[-1])] += n
        self_time[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    busy = total - groups["waiting"]
    return {
        "samples": total,
        "share": {g: round(n / total, 4) for g, n in groups.most_common()},
        "share_of_busy": {
            g: round(n / busy, 4) for g, n in groups.most_common() if g != "waiting" and busy
        },
        "top_self": [(f, round(n / total, 4)) for f, n in self_time.most_common(top)],
        "top_inclusive": [(f, round(n / total, 4)) for f, n in inclusive.most_common(top)],
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Sampling profile of the batcher under load ({result['model']}, {result['policy']})",
        "",
        f"Command: `{result['command']}`; profiled: `{result['profiled']}`",
        f"(py-spy {result['py_spy']}, {result['rate']} samples/s, idle samples included)",
        "",
    ]
    for thread, s in result["threads"].items():
        lines += [f"## {thread} thread: {s['samples']} samples", ""]
        lines.append(
            "Share of samples: " + ", ".join(f"{g} {100 * v:.1f}%" for g, v in s["share"].items())
        )
        lines.append(
            "; of the busy ones: "
            + ", ".join(f"{g} {100 * v:.1f}%" for g, v in s["share_of_busy"].items())
        )
        lines += ["", "| top frames (self) | share |", "|---|---:|"]
        lines += [f"| `{f}` | {100 * v:.1f}% |" for f, v in s["top_self"]]
        lines += ["", "| top frames (inclusive) | share |", "|---|---:|"]
        lines += [f"| `{f}` | {100 * v:.1f}% |" for f, v in s["top_inclusive"]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="bundled", choices=["bundled", "heavy"])
    p.add_argument("--policy", default="deepest-first", choices=["deepest-first", "age-aware"])
    p.add_argument("--requests", type=int, default=None, help="bundled 8192, heavy 256")
    p.add_argument("--rate", type=int, default=250)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    requests = args.requests or (8192 if args.models == "bundled" else 256)
    work = Path("runs/profile")
    work.mkdir(parents=True, exist_ok=True)
    raw = work / f"{args.models}-{args.policy}.txt"
    target = [sys.executable, "-m", "bench.engine_load", "--models", args.models, "--what"]
    target += ["policy", "--reps", "1", "--policies", args.policy, "--requests", str(requests)]
    target += ["--out", str(work)]
    spy = Path(sys.executable).parent / "py-spy"
    cmd = [str(spy), "record", "--idle", "--threads", "-r", str(args.rate), "--format", "raw"]
    subprocess.run([*cmd, "-o", str(raw), "--", *target], check=True)
    version = subprocess.run([str(spy), "--version"], capture_output=True, text=True, check=True)
    threads = {k: summarise(v) for k, v in parse(raw.read_text(encoding="utf-8")).items()}
    log.info("%s", json.dumps({k: v["share"] for k, v in threads.items()}))
    result = {
        "command": " ".join(["python -m bench.engine_profile", *(argv or sys.argv[1:])]),
        "profiled": " ".join(["python", *target[1:]]),
        "model": args.models,
        "policy": args.policy,
        "py_spy": version.stdout.strip(),
        "rate": args.rate,
        "threads": threads,
        "load": json.loads((work / f"engine_policy_{args.models}.json").read_text())["rows"],
    }
    policy = "" if args.policy == "deepest-first" else f"_{args.policy}"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"engine_profile_{args.models}{policy}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    stem.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    log.info("wrote %s.{json,md}", stem)


if __name__ == "__main__":
    main()
