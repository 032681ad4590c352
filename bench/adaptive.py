"""Open-loop load against elf-serve with the load controller off and on (issue 11, part 1).

    python -m bench.adaptive --step-s 10 --target-ms 20

First the full-depth capacity (closed loop, exit=final, `--concurrency` clients) is measured;
then, for the controller off and on, single-image requests of real Fashion-MNIST test images
arrive at fixed rates of 0.5x -> 2x -> 0.5x that capacity (`--steps`), `--step-s` seconds each,
whatever the answers do (open loop). Per step: goodput (answers 200 per second), p50/p99 latency
of the 200s, 503 and 504 rates, the accuracy actually served (labels known), the controller's
point at the end of the step. Results: bench/results/adaptive.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.images import encode, fashion_mnist
from bench.machine import command_line, facts
from bench.servers import ServerSpec, python_module, running

RESULTS = Path(__file__).parent / "results"
MODEL = Path(__file__).resolve().parents[1] / "models" / "fashion-mnist-lt"


async def one(client: httpx.AsyncClient, body: bytes, label: int, query: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        r = await client.post(
            f"/v1/classify{query}", content=body, headers={"Content-Type": "image/png"}
        )
    except httpx.HTTPError:
        return {"status": 0, "latency": time.perf_counter() - t0, "correct": False}
    ok = r.status_code == 200
    correct = ok and r.json()["results"][0]["class_index"] == label
    return {"status": r.status_code, "latency": time.perf_counter() - t0, "correct": correct}


async def capacity(url: str, images: list[tuple[bytes, int]], seconds: float, conc: int) -> float:
    """Images per second at full depth, closed loop with `conc` clients."""
    done, stop = 0, time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def worker(w: int) -> None:
            nonlocal done
            i = w
            while time.perf_counter() < stop:
                body, label = images[i % len(images)]
                await one(client, body, label, "?exit=final")
                done, i = done + 1, i + conc

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(conc)))
        return done / (time.perf_counter() - t0)


async def open_loop(
    url: str, images: list[tuple[bytes, int]], rate: float, seconds: float
) -> dict[str, Any]:
    n = int(rate * seconds)
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        t0, tasks = time.perf_counter(), []
        for i in range(n):  # request i leaves at t0 + i / rate, answered or not
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            body, label = images[i % len(images)]
            tasks.append(asyncio.create_task(one(client, body, label, "")))
        out = await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    ok = [o for o in out if o["status"] == 200]
    lat = np.array([o["latency"] for o in ok]) * 1e3
    return {
        "rate": rate,
        "sent": n,
        "goodput": len(ok) / wall,
        "p50_ms": float(np.percentile(lat, 50)) if ok else None,
        "p99_ms": float(np.percentile(lat, 99)) if ok else None,
        "rate_503": sum(o["status"] == 503 for o in out) / n,
        "rate_504": sum(o["status"] == 504 for o in out) / n,
        "other_errors": sum(o["status"] not in (200, 503, 504) for o in out),
        "served_accuracy": sum(o["correct"] for o in ok) / len(ok) if ok else None,
    }


def point(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    keep = (
        "elf_operating_point_accuracy",
        "elf_operating_point_flops_ratio",
        "elf_operating_point_moves_total",
    )
    got: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(keep):
            name, value = line.rsplit(" ", 1)
            got[name] = float(value)
    return got


def spec(env: dict[str, str]) -> ServerSpec:
    base = {
        "ELF_MODEL_DIR": str(MODEL),
        "ELF_PROVIDERS": "cpu",
        "ELF_REQUEST_TIMEOUT_S": "2",
        "ELF_MAX_QUEUE_SIZE": "256",
    }
    return ServerSpec(
        "elf", python_module("server.cli", "--host", "127.0.0.1"), "/v2/health/ready", base | env
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--step-s", type=float, default=10.0)
    p.add_argument("--steps", default="0.5,2,0.5")
    p.add_argument("--target-ms", type=float, default=20.0)
    p.add_argument("--capacity-s", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--images", type=int, default=2000)
    a = p.parse_args()
    pixels, labels = fashion_mnist("test")
    images = [(encode(pixels[i], 28, 1, "png"), int(labels[i])) for i in range(a.images)]
    logs = RESULTS / "logs"
    with running(spec({}), logs, 120) as s:
        cap = asyncio.run(capacity(s.url, images, a.capacity_s, a.concurrency))
    runs: dict[str, Any] = {}
    for mode, env in (("off", {}), ("on", {"ELF_LATENCY_TARGET_MS": str(a.target_ms)})):
        steps = []
        with running(spec(env), logs, 120) as s:
            for factor in (float(f) for f in a.steps.split(",")):
                step = asyncio.run(open_loop(s.url, images, factor * cap, a.step_s))
                steps.append({"factor": factor, **step, "point": point(s.url)})
        runs[mode] = steps
    result = {
        "command": command_line(),
        "machine": facts(),
        "capacity_full_depth": cap,
        "target_ms": a.target_ms,
        "step_s": a.step_s,
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "adaptive.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
