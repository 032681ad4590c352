"""Open-loop load against elf-serve with the load controller off and on (issue 11, part 1).

    python -m bench.adaptive --model bundled --target-ms 25,50
    python -m bench.adaptive --model heavy --target-ms 1000

One server (controller off) first measures, closed loop with `--concurrency` clients, the
capacity in images per second at full depth (exit=final), at the calibrated point (the default
thresholds) and at the floor point (the cheapest point the controller may use, set by PUT), side
by side: whether the floor gives the 2x a 2x overload needs. Then, for the controller off (the
same server) and on (a fresh server per ELF_LATENCY_TARGET_MS in `--target-ms`), single-image
requests of real Fashion-MNIST test images arrive at fixed rates of `--steps` (0.5x -> 2x ->
0.5x) the full-depth capacity, `--step-s` seconds each, whatever the answers do (open loop).
Per step: goodput (answers 200 per second), p50/p99 latency of the 200s as the client sees it,
503 (overloaded: shed by the controller; queue full) and 504 rates, the accuracy actually served
(labels known), client and server CPU, the controller's point at the end of the step. Each run
replaces its model's entry in bench/results/adaptive.json; bench.adaptive_report writes
adaptive.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvloop

from bench import openloop
from bench.heavy_model import ensure, heavy_config
from bench.images import encode, fashion_mnist
from bench.machine import command_line, facts
from bench.openloop import Client
from bench.servers import RunningServer, ServerSpec, python_module, running
from server.batching.controller import build_menu, curve_points

RESULTS = Path(__file__).parent / "results"
BUNDLED = Path(__file__).resolve().parents[1] / "models" / "fashion-mnist-lt"
TOKEN = "bench-adaptive"
SETTLE_S = 5.0  # p99_settled_ms leaves out the requests sent in a step's first seconds
Image = tuple[bytes, int, str]  # encoded image, label, content type


@dataclass(frozen=True)
class Setup:
    model_dir: Path
    size: int  # px sent (the heavy model's 224, as it was fitted)
    channels: int
    fmt: str
    env: dict[str, str]  # server settings besides the common ones


def setup(name: str) -> Setup:
    if name == "bundled":
        return Setup(BUNDLED, 28, 1, "PNG", {})
    # 8 rows per batch: a batch of resnet50 at 224 px is ~10x a 28 px image's whole request.
    env = {"ELF_MAX_BATCH_SIZE": "8", "ELF_WARMUP_ALL_BATCH_SIZES": "false"}
    return Setup(ensure(heavy_config()).resolve(), 224, 3, "JPEG", env)


async def capacity(url: str, images: list[Image], seconds: float, conc: int, query: str) -> float:
    """Images per second answered, closed loop with `conc` clients."""
    host, port = url.removeprefix("http://").split(":")
    client = Client(host, int(port), timeout_s=60.0)
    done, stop = 0, time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        i = w
        while time.perf_counter() < stop:
            img = images[i % len(images)]
            answer = await client.post(f"/v1/classify{query}", img[0], img[2])
            done += answer.status == 200  # after the await: `done += await ...` loses counts
            i += conc

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(conc)))
    client.close()
    return done / (time.perf_counter() - t0)


async def open_loop(url: str, images: list[Image], rate: float, seconds: float) -> dict[str, Any]:
    n = int(rate * seconds)
    host, port = url.removeprefix("http://").split(":")
    client = Client(host, int(port), timeout_s=60.0)
    reqs = [images[i % len(images)] for i in range(n)]
    out, sent_in, wall = await openloop.run(client, reqs, "/v1/classify", rate)
    client.close()
    ok = [o for o in out if o["status"] == 200]
    lat = np.array([o["latency"] for o in ok]) * 1e3
    settled = np.array([o["latency"] for o in ok if o["at"] >= SETTLE_S]) * 1e3
    return {
        "rate": rate,
        "sent": n,
        "send_rate": n / sent_in,  # what the client kept up (it shares the cores)
        "goodput": len(ok) / wall,
        "p50_ms": float(np.percentile(lat, 50)) if ok else None,
        "p99_ms": float(np.percentile(lat, 99)) if ok else None,
        # The steady state: requests sent after the first SETTLE_S of the step.
        "p99_settled_ms": float(np.percentile(settled, 99)) if settled.size else None,
        "rate_503_shed": sum(o["status"] == 503 and o["shed"] for o in out) / n,
        "rate_503_other": sum(o["status"] == 503 and not o["shed"] for o in out) / n,
        "rate_504": sum(o["status"] == 504 for o in out) / n,
        "other_errors": sum(o["status"] not in (200, 503, 504) for o in out),
        "served_accuracy": sum(o["correct"] for o in ok) / len(ok) if ok else None,
    }


def point(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    keep = ("elf_operating_point_", "elf_rejected_total")
    got: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(keep) and "_created" not in line:
            name, value = line.rsplit(" ", 1)
            got[name] = float(value)
    return got


def spec(s: Setup, env: dict[str, str]) -> ServerSpec:
    base = {
        "ELF_MODEL_DIR": str(s.model_dir),
        "ELF_PROVIDERS": "cpu",
        "ELF_REQUEST_TIMEOUT_S": "10",
        "ELF_MAX_QUEUE_SIZE": "1024",
        "ELF_ADMIN_TOKEN": TOKEN,
    }
    argv = python_module("server.cli", "--host", "127.0.0.1")
    return ServerSpec("elf", argv, "/v2/health/ready", base | s.env | env)


def floor_point(model_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(calibrated point, floor point) of the controller's menu, as it builds it."""
    curve = json.loads((model_dir / "calibration.json").read_text())
    base = tuple(json.loads((model_dir / "manifest.json").read_text())["exits"][i]["threshold"]
                 for i in range(len(curve["chosen"]["thresholds"])))  # fmt: skip
    menu = build_menu(curve_points(curve), base, None, 0.01, curve_points(curve, "curve"))
    as_dict = [{"thresholds": list(p.thresholds), "accuracy": p.accuracy,
                "flops_ratio": p.flops_ratio} for p in (menu[0], menu[-1])]  # fmt: skip
    return as_dict[0], {**as_dict[1], "menu_points": len(menu)}


def put(url: str, model: str, thresholds: list[float]) -> None:
    r = httpx.put(f"{url}/v1/models/{model}/thresholds", json={"thresholds": thresholds},
                  headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)  # fmt: skip
    r.raise_for_status()


def capacities(
    s: RunningServer, images: list[Image], a: argparse.Namespace, floor: list[float]
) -> dict[str, float]:
    """Closed-loop images/s at full depth, the calibrated point and the floor, side by side."""
    model = httpx.get(f"{s.url}/v1/models", timeout=10).json()["models"][0]["name"]
    base = httpx.get(f"{s.url}/v1/models/{model}", timeout=10).json()["thresholds"]
    cap: dict[str, float] = {}
    for name, query in (("full_depth", "?exit=final"), ("calibrated", ""), ("floor", "")):
        if name == "floor":
            put(s.url, model, floor)
        cap[name] = uvloop.run(capacity(s.url, images, a.capacity_s, a.concurrency, query))
    put(s.url, model, base)
    return cap


def steps(s: RunningServer, images: list[Image], cap: float, a: argparse.Namespace) -> list[Any]:
    out = []
    for factor in (float(f) for f in a.steps.split(",")):
        cpu0, client0 = s.cpu_seconds(), resource.getrusage(resource.RUSAGE_SELF)
        step = uvloop.run(open_loop(s.url, images, factor * cap, a.step_s))
        client1 = resource.getrusage(resource.RUSAGE_SELF)
        client = client1.ru_utime + client1.ru_stime - client0.ru_utime - client0.ru_stime
        cpu = {"server_cpu_s": s.cpu_seconds() - cpu0, "client_cpu_s": client}
        out.append({"factor": factor, **step, **cpu, "metrics": point(s.url)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", choices=["bundled", "heavy"], default="bundled")
    p.add_argument("--step-s", type=float, default=30.0)
    p.add_argument("--steps", default="0.5,2,0.5")
    p.add_argument("--target-ms", required=True, help="comma-separated: one run per target")
    p.add_argument("--capacity-s", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--images", type=int, default=2000)
    a = p.parse_args()
    s = setup(a.model)
    pixels, labels = fashion_mnist("test")
    ctype = f"image/{s.fmt.lower()}"
    images = [(encode(pixels[i], s.size, s.channels, s.fmt), int(labels[i]), ctype)
              for i in range(a.images)]  # fmt: skip
    calibrated, floor = floor_point(s.model_dir)
    logs = Path("runs/bench-adaptive-logs")  # server logs, not committed
    runs: dict[str, Any] = {}
    with running(spec(s, {}), logs, 600) as srv:
        cap = capacities(srv, images, a, floor["thresholds"])
        runs["off"] = steps(srv, images, cap["full_depth"], a)
    targets = [float(t) for t in a.target_ms.split(",")]
    for target in targets:
        with running(spec(s, {"ELF_LATENCY_TARGET_MS": str(target)}), logs, 600) as srv:
            runs[f"on {target:g} ms"] = steps(srv, images, cap["full_depth"], a)
    result = {
        "command": command_line(),
        "machine": facts(),
        "model_dir": str(s.model_dir),
        "capacity": cap,
        "calibrated_point": calibrated,
        "floor_point": floor,
        "target_ms": targets,
        "step_s": a.step_s,
        "runs": runs,
    }
    path = RESULTS / "adaptive.json"
    everything = json.loads(path.read_text()) if path.is_file() else {}
    everything = everything if "runs" not in everything else {}  # the older single-model file
    everything[a.model] = result
    path.write_text(json.dumps(everything, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
