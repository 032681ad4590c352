"""gRPC against HTTP (binary and JSON) on one elf-serve, and the cost of a version swap.

One elf-serve (one worker) serves a repository holding the model as version 1; tritonclient's
asyncio clients drive it in closed loop from this process, the protocols in turn at each
concurrency: `grpc` (raw_input_contents), `http-binary` (binary tensor extension), `http-json`
(base64 in JSON); one image file per request (BYTES), its class_index checked against the label.
Swap: under --swap-concurrency gRPC clients, the next version (a copy) is loaded (load_model);
the latency of the requests started during the swap against the 3 s before it, --swaps times.

    python -m bench protocols --models bundled heavy   # bench/results/protocols.json and
                                                       # docs/benchmarks/protocols.md
    python -m bench protocols --quick                  # a smoke test into runs/bench-quick/
    python -m bench protocols report                   # the page again from the JSON
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import http, machine, pages
from bench.servers import RunningServer, ServerSpec, free_port, running

log = logging.getLogger("bench.protocols")
PROTOCOLS = ("grpc", "http-binary", "http-json")
TOKEN = "bench-admin-token"
Sample = tuple[float, float, bool]  # (start, latency s, answered with the image's label)
Call = Callable[[bytes], Awaitable[int]]
READY = "/v2/health/ready"


def add_version(model_dir: Path, root: Path, name: str, version: int) -> None:
    """root/<name>/<version>/: the model's files hard-linked, its manifest with that version."""
    manifest = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8"))
    target = root / name / str(version)
    shutil.rmtree(target, ignore_errors=True)
    skip = shutil.ignore_patterns("manifest.json")
    shutil.copytree(model_dir, target, ignore=skip, copy_function=os.link)
    (target / "manifest.json").write_text(json.dumps({**manifest, "version": str(version)}))


def infer_call(protocol: str, server: RunningServer, grpc_port: int, name: str) -> tuple[Call, Any]:
    """(an async call(image bytes) -> class_index, the client to close)."""
    if protocol == "grpc":
        import tritonclient.grpc.aio as g  # noqa: PLC0415

        client: Any = g.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        outputs = [g.InferRequestedOutput("class_index")]
    else:
        import tritonclient.http.aio as g  # noqa: PLC0415

        client = g.InferenceServerClient(server.url[len("http://") :], conn_limit=256)
        outputs = [g.InferRequestedOutput("class_index", binary_data=protocol == "http-binary")]

    async def call(data: bytes) -> int:
        inp = g.InferInput("input", [1], "BYTES")
        if protocol == "http-json":  # base64 text in the JSON body
            inp.set_data_from_numpy(np.array([base64.b64encode(data)], np.object_), False)
        else:
            inp.set_data_from_numpy(np.array([data], dtype=np.object_))
        result = await client.infer(name, [inp], outputs=outputs)
        return int(result.as_numpy("class_index")[0])

    return call, client


async def under_load(
    call: Call, case: http.ModelCase, c: int, seconds: float, action: Any = None
) -> tuple[list[Sample], list[str], float, float]:
    """`c` closed-loop clients for `seconds`, then `action` (in a thread) and 1 s more:
    (samples, errors, when the action started, when it ended)."""
    samples: list[Sample] = []
    errors: list[str] = []
    images, labels, stop = case.images.read(), case.images.labels, asyncio.Event()

    async def client(i: int) -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                got = await call(images[i % len(images)])
                samples.append((t0, time.perf_counter() - t0, got == labels[i % len(images)]))
            except Exception as exc:  # every failure is counted in the row, none hidden
                errors.append(" ".join(str(exc).split())[:200])
            i += c

    clients = asyncio.gather(*(client(k) for k in range(c)))
    await asyncio.sleep(seconds)
    t0 = t1 = time.perf_counter()
    if action is not None:
        await asyncio.to_thread(action)
        t1 = time.perf_counter()
        await asyncio.sleep(1.0)
    stop.set()
    await clients
    return samples, errors, t0, t1


def summary(samples: list[Sample], errors: list[str]) -> dict[str, Any]:
    ms, ok = np.array([s[1] for s in samples] or [np.nan]) * 1e3, [s[2] for s in samples]
    lat = {f"p{q}": round(float(np.percentile(ms, q)), 3) for q in (50, 90, 99, 100)}
    out = {"requests": len(samples), "latency_ms": lat, "errors": len(errors)}
    return out | {"accuracy": round(float(np.mean(ok)), 5) if ok else None, "first": errors[:3]}


async def protocol_row(call: Call, case: Any, p: str, c: int, server: Any) -> dict[str, Any]:
    cpu, seconds = server.cpu_seconds(), case.duration_s
    samples, errors, _, _ = await under_load(call, case, c, seconds)
    cores = (server.cpu_seconds() - cpu) / seconds
    row = {"model": case.key, "protocol": p, "concurrency": c}
    log.info("%s %s c=%d: %.1f req/s", case.key, p, c, len(samples) / seconds)
    row |= {"throughput_rps": round(len(samples) / seconds, 2), **summary(samples, errors)}
    return row | {"server_cpu_cores": round(cores, 3)}


async def swap_row(
    call: Call, case: http.ModelCase, server: RunningServer, name: str, *, version: int, args: Any
) -> dict[str, Any]:
    """Load the next version under load; the requests started during it against before it."""
    import tritonclient.http as th  # noqa: PLC0415

    admin = th.InferenceServerClient(server.url[len("http://") :], network_timeout=600)
    add_version(case.model_dir, args.log_dir / "repository" / case.key, name, version)
    load = lambda: admin.load_model(name, headers={"Authorization": f"Bearer {TOKEN}"})  # noqa: E731
    samples, errors, t0, t1 = await under_load(call, case, args.swap_concurrency, 4.0, load)
    before = [s for s in samples if t0 - 3.0 <= s[0] < t0]  # after 1 s of ramp-up
    during = [s for s in samples if t0 <= s[0] <= t1]
    log.info("%s swap to %d: %.2f s", case.key, version, t1 - t0)
    row = {"model": case.key, "version": version, "swap_s": round(t1 - t0, 3)}
    return row | {
        "errors": len(errors),
        "before": summary(before, []),
        "during": summary(during, []),
    }


async def run_case(case: http.ModelCase, args: argparse.Namespace) -> dict[str, Any]:
    name = json.loads((case.model_dir / "manifest.json").read_text())["name"]
    root = args.log_dir / "repository" / case.key
    shutil.rmtree(root, ignore_errors=True)
    add_version(case.model_dir, root, name, 1)
    port, elf_serve = free_port(), str(Path(sys.executable).parent / "elf-serve")
    env = {"ELF_PROVIDERS": "cpu", "ELF_LOG_LEVEL": "warning", "ELF_WORKERS": "1"}
    env |= {"ELF_GRPC_PORT": str(port), "ELF_ADMIN_TOKEN": TOKEN}
    env |= dict(item.split("=", 1) for item in args.elf_env)
    spec = ServerSpec("elf-protocols", [elf_serve, "--model-dir", str(root)], READY, env)
    rows, swaps = [], []
    with running(spec, args.log_dir, args.ready_timeout) as server:
        calls = {p: infer_call(p, server, port, name) for p in PROTOCOLS}
        for p in PROTOCOLS:  # warm-up: connections, code paths, batch shapes
            await under_load(calls[p][0], case, max(args.concurrency), args.warmup)
        for c in args.concurrency:  # the protocols interleaved at each concurrency
            rows += [await protocol_row(calls[p][0], case, p, c, server) for p in PROTOCOLS]
        for version in range(2, 2 + args.swaps):
            swaps.append(
                await swap_row(calls["grpc"][0], case, server, name, version=version, args=args)
            )
        for _, client in calls.values():
            await client.close()
    return {"key": case.key, "rows": rows, "swaps": swaps, "model": http.model_info(case)}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench protocols",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="1 s per point, c=1,8, one swap")
    p.add_argument("--models", nargs="+", default=["bundled"], choices=["bundled", "heavy"])
    p.add_argument("--concurrency", type=int, nargs="+", default=None, help="default 1 8 32 64")
    p.add_argument("--duration", type=float, default=None, help="s per point (8)")
    p.add_argument("--warmup", type=float, default=None, help="s of load per protocol first (3)")
    p.add_argument("--swaps", type=int, default=None, help="version swaps per model (3)")
    p.add_argument("--swap-concurrency", type=int, default=32, help="gRPC load during swaps")
    p.add_argument("--model-dir", type=Path, default=Path("models/fashion-mnist-lt"))
    p.add_argument("--heavy-model-dir", type=Path, default=Path("runs/bench-models/resnet50-224"))
    p.add_argument("--out", type=Path, default=None, help="default bench/results (quick: runs/)")
    p.add_argument("--pages", type=Path, default=None, help=f"page folder (default {pages.PAGES})")
    p.add_argument("--elf-env", nargs="+", default=[], metavar="ELF_X=V", help="extra settings")
    p.add_argument("--name", default="protocols", help="results file stem (default protocols)")
    a = p.parse_args(argv)
    q = a.quick
    a.concurrency = a.concurrency or ([1, 8] if q else [1, 8, 32, 64])
    a.duration = a.heavy_duration = a.duration or (1.0 if q else 8.0)
    a.warmup = a.warmup or (0.5 if q else 3.0)
    a.swaps = a.swaps if a.swaps is not None else (1 if q else 3)
    a.out = a.out or (Path("runs/bench-quick") if q else pages.RESULTS)
    a.pages = a.pages or (a.out if q else pages.PAGES)
    a.image_root, a.log_dir, a.ready_timeout = (
        Path("runs/bench-images"),
        Path("runs/bench-protocols"),
        300.0,
    )
    a.images, a.stand_in = None, False  # what bench.http.model_cases reads besides
    return a


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if argv[:1] == ["report"]:
        out = pages.RESULTS / "protocols.json"
        log.info("wrote %s", write_page(out, pages.load(out), pages.PAGES))
        return 0
    args = parse_args(argv)
    result, t0 = machine.stamp("protocols"), time.monotonic()
    cases = [asyncio.run(run_case(case, args)) for case in http.model_cases(args)]
    result |= {
        "wall_s": round(time.monotonic() - t0, 1),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "models": {c["key"]: c["model"] for c in cases},
        "rows": [r for c in cases for r in c["rows"]],
        "swaps": [s for c in cases for s in c["swaps"]],
    }
    out = args.out / f"{args.name}.json"
    pages.save(result, out)
    log.info("wrote %s and %s", out, write_page(out, result, args.pages))
    return 0


def write_page(source: Path, result: dict[str, Any], folder: Path) -> Path:
    lines = pages.header("gRPC and HTTP, and a version swap", result, source)
    lines += [
        "One elf-serve (one worker); tritonclient's asyncio clients in closed loop from one "
        "process; one image file per request (a BYTES tensor).",
        "",
        "## Protocols",
        "",
    ]
    head = ["model", "protocol", "concurrency", "req/s", "p50 ms", "p99 ms", "errors", "cores"]
    rows = [
        [r["model"], r["protocol"], str(r["concurrency"]), f"{r['throughput_rps']:.1f}"]
        + [f"{r['latency_ms'][q]:.2f}" for q in ("p50", "p99")]
        + [str(r["errors"]), f"{r['server_cpu_cores']:.2f}"]
        for r in result["rows"]
    ]
    lines += [*pages.table(head, rows, "lllrrrrr"), "", "## Version swaps", ""]
    lines += [
        f"gRPC at concurrency {result['settings']['swap_concurrency']}: the requests started "
        "during a swap (load_model of the next version) and in the 3 s before it.",
        "",
    ]
    head = ["model", "to version", "swap s", "p50 / p99 ms before", "p50 / p99 ms during", "errors"]
    rows = [
        [s["model"], str(s["version"]), f"{s['swap_s']:.2f}"]
        + ["{p50:.2f} / {p99:.2f}".format(**s[k]["latency_ms"]) for k in ("before", "during")]
        + [str(s["errors"])]
        for s in result["swaps"]
    ]
    return pages.write("protocols", [*lines, *pages.table(head, rows, "llrrrr")], folder)
