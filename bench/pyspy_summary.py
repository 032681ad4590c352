"""Summarise a py-spy raw (collapsed) profile of elf-serve's event-loop thread by what the time
is spent on (the groups below, first match wins, matched on the stack from the leaf up).

    py-spy record -p PID -d 10 -r 200 --threads -f raw -o prof.raw   # under load (bench/wrk)
    python -m bench.pyspy_summary prof.raw [more.raw ...]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

# (substring of a frame, group): the first group any frame of the stack (leaf first) matches.
GROUPS = (
    ("RequestResponseCycle.send", "socket writes of the response (uvicorn send)"),
    ("decode_all", "image decode (Pillow + normalise)"),
    ("Request.body", "request body read"),
    ("read_images", "request body read"),
    ("_prediction", "answer building + JSON"),
    ("dict_response", "answer building + JSON"),
    ("json_response", "answer building + JSON"),
    ("model_dump_json", "answer building + JSON"),
    ("classify (server/service.py", "batcher hand-off + answers (service.classify)"),
    ("record_answers", "batcher hand-off + answers (service.classify)"),
    ("data_received", "HTTP parsing (httptools)"),
    ("RequestMetricsMiddleware", "middleware, routing, framework"),
    ("run_asgi", "middleware, routing, framework"),
    ("Runner.run", "event loop itself (uvloop: epoll, socket reads, callbacks)"),
)


def summarise(path: Path, thread: str = "MainThread") -> tuple[int, Counter[str]]:
    groups: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if thread not in frames[0]:
            continue
        n = int(count)
        total += n
        for frame in reversed(frames[1:]):
            group = next((g for key, g in GROUPS if key in frame), None)
            if group is not None:
                groups[group] += n
                break
        else:
            groups["other"] += n
    return total, groups


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("raw", type=Path, nargs="+")
    p.add_argument("--thread", default="MainThread")
    args = p.parse_args(argv)
    results = [summarise(r, args.thread) for r in args.raw]
    names = sorted({g for _, c in results for g in c}, key=lambda g: -results[0][1][g])
    out = ["| share of event-loop samples | " + " | ".join(r.name for r in args.raw) + " |"]
    out.append("|---|" + "---:|" * len(args.raw))
    for g in names:
        cells = [f"{100 * c[g] / max(t, 1):.1f}%" for t, c in results]
        out.append(f"| {g} | " + " | ".join(cells) + " |")
    out.append("| samples | " + " | ".join(str(t) for t, _ in results) + " |")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
