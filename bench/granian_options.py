"""Granian's own options for elf-serve, side by side with uvicorn, in one run (bundled model).

Each variant is one elf-serve process (uvicorn, or Granian built by server.frontend's
granian_server with the variant's keyword arguments), started alone, warmed with load, then
measured with wrk at each concurrency (closed loop, raw PNG bodies, bench/wrk/post_images.lua);
server CPU = its processes' CPU / requests. Needs runs/bench-http-logs/bundled-images.tsv
(written by `python -m bench.http --models bundled`).

    python -m bench.granian_options --name http-granian-options   # bench/results/<name>.{md,json}
    python -m bench.granian_options serve --options '{"task_impl": "rust"}' --port N   (internal)
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import machine
from bench.servers import ServerSpec, python_module, running
from bench.wrk_run import run_wrk

log = logging.getLogger("bench.granian_options")

# name -> Granian keyword arguments over server.frontend's (None: uvicorn, elf-serve's default).
VARIANTS: dict[str, dict[str, Any] | None] = {
    "uvicorn": None,
    "granian": {},
    "granian st": {"runtime_mode": "st"},
    "granian task rust": {"task_impl": "rust"},
    "granian st + task rust": {"runtime_mode": "st", "task_impl": "rust"},
    "granian loop asyncio": {"loop": "asyncio"},
    "uvicorn 2w": None,
    "granian 2w": {},
}


def serve(options: dict[str, Any], port: int) -> None:
    from server.frontend import Listen, granian_server  # noqa: PLC0415
    from server.settings import Settings  # noqa: PLC0415

    multiprocessing.set_start_method("spawn", force=True)
    listen = Listen("127.0.0.1", port, access_log=False, graceful_timeout_s=5.0)
    granian_server(Settings(), listen, **options).serve()


def spec(name: str, model_dir: Path) -> ServerSpec:
    options = VARIANTS[name]
    env = {"ELF_PROVIDERS": "cpu", "ELF_LOG_LEVEL": "warning", "ELF_MODEL_DIR": str(model_dir)}
    env["ELF_WORKERS"] = "2" if name.endswith(" 2w") else "1"
    if options is None:
        argv = [str(Path(sys.executable).parent / "elf-serve")]
    else:
        argv = python_module("bench.granian_options", "serve", "--options", json.dumps(options))
    return ServerSpec(name.replace(" ", "-"), argv, "/v2/health/ready", env)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every variant once per round, rounds one after another: drift hits all alike."""
    rows = []
    for rnd, name in ((r, n) for r in range(args.rounds) for n in args.variants):
        with running(spec(name, args.model_dir), args.log_dir, 120.0) as server:
            url = server.url + "/v1/classify"
            run_wrk(url, args.image_list, "raw", max(args.concurrency), args.warmup)
            for c in args.concurrency:
                cpu0 = server.cpu_seconds()
                r = run_wrk(url, args.image_list, "raw", c, args.duration)
                cpu = server.cpu_seconds() - cpu0
                rows.append(
                    {
                        "variant": name,
                        "round": rnd,
                        "options": VARIANTS[name],
                        "concurrency": c,
                        "throughput_rps": round(r.throughput, 2),
                        "latency_ms": {k: round(v, 3) for k, v in r.latency_ms.items()},
                        "accuracy": r.accuracy,
                        "non200": r.non200,
                        "server_cpu_ms_per_request": round(1e3 * cpu / max(r.requests, 1), 4),
                    }
                )
                log.info("%-24s c=%-3d %8.1f req/s", name, c, r.throughput)
                time.sleep(1.0)  # the last wrk's requests leave the server (small model: ms)
    return rows


def medians(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, float]]:
    """(variant, concurrency) -> the median over rounds of req/s, p50, p99, CPU ms/req."""
    keys = {(r["variant"], r["concurrency"]) for r in rows}
    out = {}
    for v, c in keys:
        mine = [r for r in rows if (r["variant"], r["concurrency"]) == (v, c)]
        out[(v, c)] = {
            "throughput_rps": statistics.median(r["throughput_rps"] for r in mine),
            "p50": statistics.median(r["latency_ms"]["p50"] for r in mine),
            "p99": statistics.median(r["latency_ms"]["p99"] for r in mine),
            "cpu": statistics.median(r["server_cpu_ms_per_request"] for r in mine),
            "rounds": len(mine),
        }
    return out


def report(rows: list[dict[str, Any]], command: str) -> str:
    concs = sorted({r["concurrency"] for r in rows})
    by = medians(rows)
    head = " | ".join(f"c={c}: req/s (x uvicorn), p50 / p99 ms, CPU ms/req" for c in concs)
    lines = [
        "# Granian's options for elf-serve, side by side with uvicorn (bench/granian_options.py)",
        "",
        f"Command: `{command}`",
        "",
        f"Medians over {max(r['round'] for r in rows) + 1} rounds (every variant once per round,"
        " one after another); `x uvicorn` against the same worker count.",
        "",
        machine.markdown(machine.facts()),
        "",
        f"| variant | {head} |",
        "|---|" + "---|" * len(concs),
    ]
    for name in dict.fromkeys(r["variant"] for r in rows):
        cells = []
        base_name = "uvicorn 2w" if name.endswith(" 2w") else "uvicorn"
        for c in concs:
            m, base = by[(name, c)], by.get((base_name, c))
            x = m["throughput_rps"] / base["throughput_rps"] if base else float("nan")
            cells.append(
                f"{m['throughput_rps']:.1f} ({x:.2f}x), {m['p50']:.1f} / {m['p99']:.1f}, "
                f"{m['cpu']:.2f}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        p = argparse.ArgumentParser()
        p.add_argument("--options", type=json.loads, required=True)
        p.add_argument("--port", type=int, required=True)
        a = p.parse_args(argv[1:])
        serve(a.options, a.port)
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS)[:6], choices=list(VARIANTS))
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--model-dir", type=Path, default=Path("models/fashion-mnist-lt"))
    p.add_argument(
        "--image-list", type=Path, default=Path("runs/bench-http-logs/bundled-images.tsv")
    )
    p.add_argument("--log-dir", type=Path, default=Path("runs/bench-granian-logs"))
    p.add_argument("--name", default="http-granian-options")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.log_dir.mkdir(parents=True, exist_ok=True)
    rows = measure(args)
    command = machine.command_line()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"command": command, "machine": machine.facts(), "rows": rows}
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(report(rows, command), encoding="utf-8")


if __name__ == "__main__":
    main()
