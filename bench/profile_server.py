"""Where a request's time goes on the server's event-loop thread: cProfile under wrk load.

Runs the app in this process under uvicorn (the same loop and HTTP implementation elf-serve gets:
uvloop + httptools when installed), drives it with wrk from a helper thread, and profiles the
event-loop thread only while the measured load runs. Self time is grouped by package, so the
proportions say what a request costs besides the model; absolute numbers carry cProfile's own
overhead (every Python call is slowed, C code is not), so compare proportions, not milliseconds.
The batcher thread (ONNX Runtime) and FastAPI's thread pool are not profiled.

    python -m bench.profile_server --target elf --model-dir models/fashion-mnist-lt
    python -m bench.profile_server --target fastapi --model-dir models/fashion-mnist-lt
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import logging
import pstats
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import uvicorn

from bench.images import write_image_set
from bench.servers import free_port
from bench.wrk_run import WrkResult, run_wrk, write_list

log = logging.getLogger("bench.profile_server")
T = TypeVar("T")

# (substring of the file path, group), first match wins; C builtins are grouped by name.
GROUPS = (
    ("/uvicorn/", "uvicorn (HTTP protocol, ASGI glue)"),
    ("/httptools/", "uvicorn (HTTP protocol, ASGI glue)"),
    ("/fastapi/", "fastapi (routing, dependencies, parameter validation)"),
    ("/starlette/", "starlette (routing, Request, Response, middleware stack)"),
    ("/pydantic", "pydantic (validation, serialisation)"),
    ("/prometheus_client/", "metrics (prometheus_client)"),
    ("server/metrics", "metrics (prometheus_client)"),
    ("server/api/middleware", "server middleware (metrics, body limit)"),
    ("server/preprocess", "image decode (server.preprocess + Pillow + numpy)"),
    ("/PIL/", "image decode (server.preprocess + Pillow + numpy)"),
    ("/numpy/", "numpy"),
    ("server/batching", "batcher hand-off (submit, futures, resolve)"),
    ("server/", "server handlers (api, service, models)"),
    ("bench/baselines", "baseline handler"),
    ("/anyio/", "thread-pool hand-off (anyio, threading)"),
    ("/threading.py", "thread-pool hand-off (anyio, threading)"),
    ("/asyncio/", "asyncio (loop, futures, tasks, timeouts)"),
    ("/json/", "json"),
)


# Cumulative time of synchronous steps of a request: (label, file path suffix, function name).
# (cProfile's cumulative time of coroutines that suspend is not meaningful, so none is listed.)
STEPS = (
    ("FastAPI dependency solving", "fastapi/dependencies/utils.py", "solve_dependencies"),
    ("decode + normalise the image (inline)", "server/service.py", "decode"),
    ("answers -> response models", "server/api/v1.py", "_prediction"),
    ("response JSON (pydantic-core)", "server/api/v1.py", "json_response"),
    ("metrics: record_answers", "server/metrics.py", "record_answers"),
    ("metrics: prometheus labels()", "prometheus_client/metrics.py", "labels"),
    ("baseline: serialize_response", "fastapi/routing.py", "serialize_response"),
    ("send (response start + body to the transport)", "httptools_impl.py", "send"),
    ("HTTP parsing (data_received)", "httptools_impl.py", "data_received"),
)  # fmt: skip


def steps(prof: cProfile.Profile, requests: int) -> list[str]:
    raw: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    lines = []
    for label, suffix, func in STEPS:
        ct = sum(
            v[3] for (path, _l, name), v in raw.items() if path.endswith(suffix) and name == func
        )
        if ct > 0:
            lines.append(f"{1e3 * ct / max(requests, 1):8.3f}  {label}")
    return lines


def group_of(path: str, name: str) -> str:
    for key, group in GROUPS:
        if key in path:
            return group
    if path == "~":  # a C function: {method 'x' of 'y' objects} or <built-in ...>
        if "PIL" in name or "ImagingCore" in name or "decode" in name:
            return "image decode (server.preprocess + Pillow + numpy)"
        if "numpy" in name or "ndarray" in name:
            return "numpy"
        if "uvloop" in name or "httptools" in name or "transport" in name.lower():
            return "uvicorn (HTTP protocol, ASGI glue)"
        return "C builtins (other)"
    return "other Python"


def grouped(prof: cProfile.Profile) -> dict[str, float]:
    stats = pstats.Stats(prof)
    totals: dict[str, float] = {}
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (path, _line, name), (_cc, _nc, tottime, _ct, callers) in raw.items():
        g = group_of(path, name)
        if g in ("C builtins (other)", "other Python") and callers:
            # C functions and plain stdlib helpers are charged to whoever called them
            # (isinstance() or typing.get_origin() called by FastAPI's dependency code is
            # FastAPI's cost); one level up, which is where the framework code sits.
            for (c_path, _l, c_name), c_stats in callers.items():
                cg = group_of(c_path, c_name)
                totals[cg] = totals.get(cg, 0.0) + c_stats[2]
            continue
        totals[g] = totals.get(g, 0.0) + tottime
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def make_app(target: str, model_dir: Path) -> Any:
    if target == "elf":
        from server.app import create_app  # noqa: PLC0415
        from server.settings import Settings  # noqa: PLC0415

        return create_app(Settings(model_dir=model_dir, providers="cpu", log_level="warning"))
    from bench.baselines.fastapi_app import create_app as baseline  # noqa: PLC0415

    return baseline(model_dir)


def drive(
    server: uvicorn.Server, prof: cProfile.Profile, args: argparse.Namespace, box: dict[str, Any]
) -> None:
    """Helper thread: wait until ready, warm up, profile the loop thread during the load."""
    try:
        url = f"http://127.0.0.1:{args.port}"
        elf = args.target.startswith("elf")
        ready = "/v2/health/ready" if elf else "/health"
        deadline = time.monotonic() + 300
        while not server.started or _status(url + ready) != 200:
            if time.monotonic() > deadline:
                raise TimeoutError("server not ready")
            time.sleep(0.2)
        path = "/v1/classify" if elf else "/predict"
        images = write_image_set(args.image_root / "fmnist-test-28-png-1000", count=1000)
        lst = write_list(images, Path("/tmp") / f"profile-{args.port}.tsv")
        run_wrk(url + path, lst, "raw", args.concurrency, 2)
        loop: asyncio.AbstractEventLoop = box["loop"]
        # Without the profiler: CPU of the loop thread and of the whole process per request.
        loop0, proc0 = on_loop(loop, time.thread_time), time.process_time()
        box["plain"] = run_wrk(url + path, lst, "raw", args.concurrency, args.duration)
        box["cpu"] = (on_loop(loop, time.thread_time) - loop0, time.process_time() - proc0)
        on_loop(loop, prof.enable)  # the loop thread's profile
        box["wrk"] = run_wrk(url + path, lst, "raw", args.concurrency, args.duration)
        on_loop(loop, prof.disable)
    except BaseException as exc:
        box["error"] = exc
    finally:
        server.should_exit = True


def on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], T]) -> T:
    """Call fn on the loop's thread and return its value."""
    box: list[T] = []
    done = threading.Event()

    def call() -> None:
        box.append(fn())
        done.set()

    loop.call_soon_threadsafe(call)
    if not done.wait(30):
        raise TimeoutError("event loop did not answer")
    return box[0]


def cpu_lines(plain: WrkResult, loop_s: float, process_s: float) -> list[str]:
    n = max(plain.requests, 1)
    return [
        f"without the profiler: {plain.throughput:.0f} req/s at concurrency {plain.concurrency} "
        f"(accuracy {plain.accuracy}); "
        f"CPU per request: event-loop thread {1e3 * loop_s / n:.3f} ms, whole process "
        f"{1e3 * process_s / n:.3f} ms, other threads (batcher/ORT or thread pool/ORT) "
        f"{1e3 * (process_s - loop_s) / n:.3f} ms",
        f"-> the loop thread alone caps throughput at about {n / max(loop_s, 1e-9):.0f} req/s",
        "",
    ]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except OSError:
        return 0


def report(target: str, prof: cProfile.Profile, wrk: WrkResult, top: int, clock: str) -> str:
    groups = grouped(prof)
    total = sum(groups.values())
    per_req = 1e3 * total / max(wrk.requests, 1)
    lines = [
        f"target {target}: {wrk.requests} requests in {wrk.duration_s:.1f} s at concurrency "
        f"{wrk.concurrency} ({wrk.throughput:.0f} req/s under the profiler)",
        f"event-loop thread, profiled self time ({clock} clock): {per_req:.3f} ms per request"
        " (inflated by cProfile; use the shares)",
        "",
        "share  ms/req  group",
    ]
    for g, t in groups.items():
        lines.append(f"{100 * t / total:5.1f}% {1e3 * t / max(wrk.requests, 1):7.3f}  {g}")
    lines += ["", "Synchronous steps, cumulative (their callees included):", "  ms/req"]
    lines += steps(prof, wrk.requests)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return "\n".join(lines) + "\n\nTop functions by self time:\n" + buf.getvalue()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=["elf", "fastapi"], default="elf")
    p.add_argument("--model-dir", type=Path, default=Path("models/fashion-mnist-lt"))
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--top", type=int, default=40)
    p.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu: the loop thread's CPU time (waits for the GIL or a core excluded); wall",
    )
    p.add_argument("--image-root", type=Path, default=Path("runs/bench-images"))
    p.add_argument("--out", type=Path, default=Path("runs/bench-profile"))
    p.add_argument(
        "--plain-uvicorn",
        action="store_true",
        help="asyncio + h11 (what uvicorn falls back to without uvloop/httptools installed)",
    )
    args = p.parse_args(argv)
    args.port = free_port()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = uvicorn.Config(
        make_app(args.target, args.model_dir),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="asyncio" if args.plain_uvicorn else "auto",
        http="h11" if args.plain_uvicorn else "auto",
    )
    server = uvicorn.Server(config)
    prof = cProfile.Profile(time.thread_time) if args.clock == "cpu" else cProfile.Profile()
    box: dict[str, Any] = {}

    async def serve() -> None:
        box["loop"] = asyncio.get_running_loop()
        threading.Thread(target=drive, args=(server, prof, args, box), daemon=True).start()
        await server.serve()

    factory = config.get_loop_factory()  # uvloop when installed, as elf-serve gets it
    loop = factory() if factory is not None else asyncio.new_event_loop()
    try:
        loop.run_until_complete(serve())
    finally:
        loop.close()
    if "error" in box:
        raise box["error"]
    text = "\n".join(cpu_lines(box["plain"], *box["cpu"])) + "\n"
    text += report(args.target, prof, box["wrk"], args.top, args.clock)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"profile-{args.target}.txt"
    out.write_text(text, encoding="utf-8")
    print("\n".join(text.splitlines()[:24]))
    print(f"... full report: {out}")


if __name__ == "__main__":
    main()
