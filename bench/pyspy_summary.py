"""Summarise a py-spy raw (collapsed) profile of elf-serve by what the time is spent on.

Default: the event-loop thread's samples by task (GROUPS, first match wins, matched on the
stack from the leaf up). `--components`: every thread's samples by the component that runs at
the leaf (COMPONENTS, matched on the leaf frame's file: self time), and with `--req-per-s` the
CPU milliseconds per request each costs (samples / rate / requests in the recorded seconds;
py-spy leaves out idle samples, so a thread's samples are its busy time).

    py-spy record -p PID -d 10 -r 200 --threads -f raw -o prof.raw   # under load (bench/wrk)
    python -m bench.pyspy_summary prof.raw [more.raw ...]
    python -m bench.pyspy_summary prof.raw --components --seconds 7 --req-per-s 665
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


# (substring of the leaf frame, component), first match wins.
COMPONENTS = (
    ("onnxruntime", "ONNX Runtime (stage graphs, merges)"),
    ("(asyncio/runners.py", "event loop in C (uvloop: epoll, socket reads, callbacks)"),
    ("(server/http_protocol.py", "socket writes (server/http_protocol.py flush)"),
    ("(uvicorn/", "uvicorn HTTP protocol + httptools parsing"),
    ("(httptools/", "uvicorn HTTP protocol + httptools parsing"),
    ("(PIL/", "image decode (Pillow)"),
    ("(server/preprocess.py", "image decode (server/preprocess.py: to array, normalise)"),
    ("(starlette/", "Starlette (middleware stack, routing, Request/Response)"),
    ("(fastapi/", "FastAPI (routing, its middleware)"),
    ("(pydantic", "pydantic"),
    ("(prometheus_client/", "metrics (prometheus_client, server/metrics.py)"),
    ("(server/metrics.py", "metrics (prometheus_client, server/metrics.py)"),
    ("(server/api/middleware.py", "server middleware (request metrics, body limits)"),
    ("(server/batching/", "batcher (queues, scheduling, answers)"),
    ("(elf_core/", "batcher (queues, scheduling, answers)"),
    ("(server/engine/", "engine (IOBinding, merges)"),
    ("(numpy/", "numpy"),
    ("(server/api/v1.py", "v1 handler (read body, build answer)"),
    ("(server/service.py", "service (decode hand-off, classify, answers)"),
    ("(asyncio/", "asyncio (timeouts, gather, futures)"),
    ("(threading.py", "threading (condition waits)"),
    ("(orjson", "JSON (orjson)"),
    # Granian's worker runs uvloop from this frame: the loop's C code (epoll, the wake-ups
    # Granian's Rust thread sends, callbacks) has it as its innermost Python frame.
    ("_spawn_asgi_lifespan_worker (granian/", "event loop in C (uvloop, woken by Granian's Rust)"),
    ("(granian/", "Granian's Python glue (_futures, ASGI receive/send, the Rust they call)"),
    ("(contextlib.py", "contextlib (FastAPI's AsyncExitStack per request)"),
)
# A sample with no Python frame at all: the thread runs native code while attached to the
# interpreter (a whole thread of them under Granian: its Rust runtime thread, hyper + tokio).
NATIVE = "native code, no Python frame"


def components(path: Path) -> dict[str, Counter[str]]:
    """Samples per thread name and component of the leaf frame."""
    out: dict[str, Counter[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0].partition(": ")[2] or frames[0]
        if len(frames) == 1:
            out.setdefault(thread, Counter())[NATIVE] += int(count)
            continue
        group = next((g for key, g in COMPONENTS if key in frames[-1]), "other Python")
        out.setdefault(thread, Counter())[group] += int(count)
    return out


def component_table(path: Path, rate: float, seconds: float, req_per_s: float | None) -> str:
    per_thread = components(path)
    requests = req_per_s * seconds if req_per_s else None
    head = "| thread | component | share of the thread's samples | CPU ms per request |"
    out = [head, "|---|---|---:|---:|"]
    for thread, counts in sorted(per_thread.items(), key=lambda kv: -kv[1].total()):
        total = counts.total()
        busy = total / rate / seconds if seconds else float("nan")
        for g, n in counts.most_common():
            ms = f"{1e3 * n / rate / requests:.3f}" if requests else ""
            out.append(f"| {thread} | {g} | {100 * n / total:.1f}% | {ms} |")
        ms = f"**{1e3 * total / rate / requests:.3f}**" if requests else ""
        out.append(f"| {thread} | **all (busy {100 * busy:.0f}% of a core)** | 100% | {ms} |")
    return "\n".join(out) + "\n"


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
    p.add_argument("--components", action="store_true", help="every thread, by leaf component")
    p.add_argument("--rate", type=float, default=200.0, help="py-spy samples per second")
    p.add_argument("--seconds", type=float, default=0.0, help="seconds py-spy recorded")
    p.add_argument("--req-per-s", type=float, default=None, help="requests/s during the record")
    args = p.parse_args(argv)
    if args.components:
        for r in args.raw:
            sys.stdout.write(f"{r.name}\n\n")
            sys.stdout.write(component_table(r, args.rate, args.seconds, args.req_per_s) + "\n")
        return
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
