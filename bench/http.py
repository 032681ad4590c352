"""Serving benchmark over HTTP: this server against the servers a user would pick instead.

Load generator: wrk (its own process, C, one connection per thread; its CPU use is reported)
posting real Fashion-MNIST test images in a closed loop at each concurrency; every answer's
class_index is checked against the image's label by the Lua script. Targets, each server alone
(start, wait until ready, warm up, measure, stop):

  elf-exits          elf-serve, raw image/* body to /v1/classify (early exits at the manifest's
                     thresholds), one uvicorn worker
  elf-final          the same server process, /v1/classify?exit=final (every stage)
  elf-exits-2w       elf-serve with --workers 2 (prometheus multiprocess mode)
  elf-exits-granian  elf-serve --http-server granian (the same app behind Granian), one worker
  elf-exits-granian-2w  the same with --workers 2
  litserve           LitServe serving full.onnx with its batching (multipart body)
  fastapi            a plain FastAPI `def` endpoint running full.onnx per request (raw body)
  kserve             KServe 0.21's Python model server, full.onnx, batching (raw body)
  ray                Ray Serve 2.60, full.onnx, @serve.batch (raw body)

KServe and Ray Serve run in venvs of their own, made on first use by bench/peers.py under
runs/bench-venvs/ from the pinned bench/baselines/requirements/*.lock (minutes, once). The
batching peers log the batch sizes they ran; each row reports them, and a batching peer whose
batches stay at ~1 under 8+ concurrent requests is flagged. The in-process limit (full.onnx at
batch 32 in this process, with the server's session settings) is measured first in the same
run; the report divides it by the exit mix's FLOPs ratio and states elf-serve's share of it.

Models: the bundled model (default models/fashion-mnist-lt; `--stand-in` builds a resnet32
stand-in when it is missing) and the resnet50-style network at 224 px (bench.heavy_model).

    python -m bench http --models bundled --targets elf-exits fastapi litserve kserve ray \
        --name http-bundled           # bench/results/http-bundled.json, docs/benchmarks/http.md
    python -m bench http --quick      # a smoke test into runs/bench-quick/
    python -m bench http report       # docs/benchmarks/http.md from bench/results/http-*.json
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import machine, pages
from bench.baselines.batch_log import read_batch_sizes
from bench.http_report import write_report
from bench.images import ImageSet, content_type, load_image_set, write_image_set
from bench.servers import RunningServer, ServerSpec, python_module, running
from bench.wrk_run import WrkResult, run_wrk, write_list

log = logging.getLogger("bench.http")

TARGETS = (
    "elf-exits",
    "elf-final",
    "elf-exits-2w",
    "elf-exits-granian",
    "elf-exits-granian-2w",
    "litserve",
    "fastapi",
    "kserve",
    "ray",
)
PEERS_WITH_VENV = ("kserve", "ray")  # bench.peers makes their venvs
BATCHING = ("litserve", "kserve", "ray")  # they write a batch-size histogram (batch_log)


@dataclass(frozen=True)
class ModelCase:
    key: str  # "bundled" or "heavy"
    model_dir: Path
    images: ImageSet
    duration_s: float


def elf_spec(name: str, model_dir: Path, extra_env: list[str]) -> ServerSpec:
    """elf-serve: "elf" (1 worker), "elf-2w" (2 workers), "elf-granian[-2w]" (behind Granian)."""
    elf_serve = Path(sys.executable).parent / "elf-serve"
    env = {"ELF_PROVIDERS": "cpu", "ELF_LOG_LEVEL": "warning", "ELF_WORKERS": "1"}
    env |= dict(item.split("=", 1) for item in extra_env)
    if name.endswith("-2w"):
        env["ELF_WORKERS"] = "2"
    if name.startswith("elf-granian"):
        env["ELF_HTTP_SERVER"] = "granian"
    return ServerSpec(
        name, [str(elf_serve), "--model-dir", str(model_dir)], "/v2/health/ready", env
    )


def batch_log_path(name: str, log_dir: Path) -> Path:
    return (log_dir / f"{name}-batches.json").resolve()


def baseline_spec(name: str, model_dir: Path, log_dir: Path) -> ServerSpec:
    args = ["--model-dir", str(model_dir)]
    if name in BATCHING:
        args += ["--batch-log", str(batch_log_path(name, log_dir))]
        batch_log_path(name, log_dir).unlink(missing_ok=True)
    module = f"bench.baselines.{name}_app"
    if name not in PEERS_WITH_VENV:
        return ServerSpec(name, python_module(module, *args), "/health", {})
    from bench import peers  # noqa: PLC0415

    root = str(Path(__file__).resolve().parent.parent)  # the peers import bench.baselines
    argv = [str(peers.python(name)), "-m", module, *args]
    ready = "/v1/models/full" if name == "kserve" else "/health"
    return ServerSpec(name, argv, ready, {"PYTHONPATH": root})


# target -> (server, path, body format)
ROUTES: dict[str, tuple[str, str, str]] = {
    "elf-exits": ("elf", "/v1/classify", "raw"),
    "elf-final": ("elf", "/v1/classify?exit=final", "raw"),
    "elf-exits-2w": ("elf-2w", "/v1/classify", "raw"),
    "elf-exits-granian": ("elf-granian", "/v1/classify", "raw"),
    "elf-exits-granian-2w": ("elf-granian-2w", "/v1/classify", "raw"),
    "litserve": ("litserve", "/predict", "multipart"),
    "fastapi": ("fastapi", "/predict", "raw"),
    "kserve": ("kserve", "/v1/models/full:predict", "raw"),
    "ray": ("ray", "/predict", "raw"),
}
SERVERS = (
    "elf",
    "elf-2w",
    "elf-granian",
    "elf-granian-2w",
    "fastapi",
    "litserve",
    "kserve",
    "ray",
)

_EXITS = re.compile(r'^elf_exits_total\{[^}]*exit="(\d+)"[^}]*\}\s+([0-9.e+]+)', re.M)
_FLOPS = re.compile(r"^elf_flops_(executed|full)_total\{[^}]*\}\s+([0-9.e+]+)", re.M)


def elf_counters(server: RunningServer) -> dict[str, float]:
    """exit_<k> and flops_executed / flops_full counters from /metrics."""
    _, body = server.get("/metrics")
    text = body.decode()
    out = {f"exit_{k}": float(v) for k, v in _EXITS.findall(text)}
    out |= {f"flops_{k}": float(v) for k, v in _FLOPS.findall(text)}
    return out


def measure(
    server: RunningServer,
    *,
    target: str,
    case: ModelCase,
    image_list: Path,
    concurrency: int,
    probe: Prober,
) -> dict[str, Any]:
    _, path, body = ROUTES[target]
    batch_log = batch_log_path(server.spec.name, image_list.parent)
    is_elf = server.spec.name.startswith("elf")
    if target in BATCHING:
        time.sleep(2 * BATCH_LOG_PERIOD_S)  # the peer writes its histogram twice a second
    batches_before = read_batch_sizes(batch_log)
    before_cpu = server.cpu_seconds()
    before = elf_counters(server) if is_elf else {}
    r = run_wrk(server.url + path, image_list, body, concurrency, case.duration_s)
    cpu = server.cpu_seconds() - before_cpu
    if target in BATCHING:
        time.sleep(2 * BATCH_LOG_PERIOD_S)  # the peer writes its histogram twice a second
        row_batches = batch_summary(read_batch_sizes(batch_log) - batches_before, concurrency)
    probe.drain()
    row = record(case, target, r, cpu)
    if target in BATCHING:
        row["batches"] = row_batches
    if is_elf:
        after = elf_counters(server)
        delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        images = sum(v for k, v in delta.items() if k.startswith("exit_"))
        if images:
            row["exit_rates"] = [
                delta.get(f"exit_{k}", 0.0) / images for k in range(len(_exit_keys(delta)))
            ]
            row["flops_saved"] = 1 - delta["flops_executed"] / delta["flops_full"]
    log.info(
        "%-8s %-9s c=%-3d %8.1f req/s  p50 %7.2f ms  p99 %7.2f ms  acc %s  wrk %.3f cores",
        case.key,
        target,
        concurrency,
        r.throughput,
        r.latency_ms["p50"],
        r.latency_ms["p99"],
        "-" if r.accuracy is None else f"{100 * r.accuracy:.2f}%",
        r.wrk_cores,
    )
    return row


BATCH_LOG_PERIOD_S = 0.5


def batch_summary(sizes: Counter[int], concurrency: int) -> dict[str, Any]:
    """Batch sizes a peer ran during one measurement; at 8+ concurrent requests a batching
    server that still runs batches of ~1 is not batching (logged loudly, flagged in the report)."""
    batches = sum(sizes.values())
    rows = sum(k * v for k, v in sizes.items())
    mean = rows / batches if batches else 0.0
    out = {"batches": batches, "mean": round(mean, 2), "max": max(sizes, default=0)}
    out["batching"] = concurrency < 8 or mean >= 1.5
    if not out["batching"]:
        log.error("c=%d: mean batch size %.2f: this server is not batching", concurrency, mean)
    return out


@dataclass
class Prober:
    """wrk stops with `concurrency` requests in flight that the server still computes (a
    heavy model at c=64: seconds of work). Before the next measurement, single requests probe
    the server until one is answered about as fast as on the idle server."""

    server: RunningServer
    path: str
    body: bytes
    content_type: str
    idle_s: float = 0.0

    def once(self) -> float:
        req = urllib.request.Request(
            self.server.url + self.path,
            data=self.body,
            headers={"Content-Type": self.content_type},
            method="POST",
        )
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=300) as r:
            r.read()
        return time.perf_counter() - t0

    def calibrate(self) -> None:
        self.idle_s = min(self.once() for _ in range(5))

    def drain(self, limit_s: float = 180.0) -> None:
        deadline = time.monotonic() + limit_s
        while self.once() > max(3 * self.idle_s, self.idle_s + 0.02):
            if time.monotonic() > deadline:
                log.warning(
                    "%s still slow after %.0f s of draining", self.server.spec.name, limit_s
                )
                return
            time.sleep(0.05)


def prober(server: RunningServer, target: str, images: ImageSet) -> Prober:
    _, path, body = ROUTES[target]
    data, ctype = images.paths()[0].read_bytes(), content_type(images.files[0])
    if body == "multipart":
        boundary = "elfbenchprobe"
        data = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        ctype = f"multipart/form-data; boundary={boundary}"
    return Prober(server, path, data, ctype)


def _exit_keys(delta: dict[str, float]) -> list[str]:
    return [k for k in delta if k.startswith("exit_")]


def record(case: ModelCase, target: str, r: WrkResult, server_cpu_s: float) -> dict[str, Any]:
    return {
        "model": case.key,
        "target": target,
        "concurrency": r.concurrency,
        "requests": r.requests,
        "duration_s": round(r.duration_s, 3),
        "throughput_rps": round(r.throughput, 2),
        "latency_ms": {k: round(v, 3) for k, v in r.latency_ms.items()},
        "accuracy": None if r.accuracy is None else round(r.accuracy, 5),
        "checked": r.checked,
        "non200": r.non200,
        "socket_errors": r.errors,
        "wrk_cpu_cores": round(r.wrk_cores, 4),
        "server_cpu_cores": round(server_cpu_s / r.duration_s, 3),
        "server_cpu_ms_per_request": round(1e3 * server_cpu_s / max(r.requests, 1), 4),
    }


def run_server(
    case: ModelCase,
    *,
    server_name: str,
    targets: list[str],
    concurrencies: list[int],
    args: argparse.Namespace,
    image_list: Path,
) -> list[dict[str, Any]]:
    spec = (
        elf_spec(server_name, case.model_dir, args.elf_env)
        if server_name.startswith("elf")
        else baseline_spec(server_name, case.model_dir, args.log_dir)
    )
    rows = []
    with running(spec, args.log_dir, args.ready_timeout) as server:
        probes = {t: prober(server, t, case.images) for t in targets}
        for target in targets:  # warm-up: the code paths, ORT's arenas, the batch shapes
            probes[target].calibrate()
            _, path, body = ROUTES[target]
            run_wrk(server.url + path, image_list, body, max(concurrencies), args.warmup)
            probes[target].drain()
        # Interleave the targets of one server (a and b) at each concurrency, so drift in the
        # machine's load hits them alike.
        for c in concurrencies:
            for target in targets:
                rows.append(
                    measure(
                        server,
                        target=target,
                        case=case,
                        image_list=image_list,
                        concurrency=c,
                        probe=probes[target],
                    )
                )
    return rows


def run_case(case: ModelCase, args: argparse.Namespace) -> list[dict[str, Any]]:
    args.log_dir.mkdir(parents=True, exist_ok=True)
    image_list = write_list(case.images, args.log_dir / f"{case.key}-images.tsv")
    rows: list[dict[str, Any]] = []
    for server_name in SERVERS:
        targets = [t for t in args.targets if ROUTES[t][0] == server_name]
        if targets:
            rows += run_server(
                case,
                server_name=server_name,
                targets=targets,
                concurrencies=args.concurrency,
                args=args,
                image_list=image_list,
            )
            # What is measured so far survives a run cut short (bench_lock's time limit).
            partial = args.log_dir / f"{args.name}-{case.key}.partial.json"
            partial.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return rows


def model_cases(args: argparse.Namespace) -> list[ModelCase]:
    from bench import heavy_model  # noqa: PLC0415  (imports torch; only here)

    n_small, n_heavy = (64, 16) if args.quick else (1000, 256)
    cases = []
    if "bundled" in args.models:
        bundled = args.model_dir
        if not (bundled / "manifest.json").is_file():
            if not args.stand_in:
                sys.exit(f"{bundled}: no model there (run `make model`, or pass --stand-in)")
            bundled = heavy_model.ensure(heavy_model.stand_in_config())
        images = (
            load_image_set(args.images)
            if args.images
            else write_image_set(args.image_root / f"fmnist-test-28-png-{n_small}", count=n_small)
        )
        cases.append(ModelCase("bundled", bundled, images, args.duration))
    if "heavy" in args.models:
        heavy = heavy_model.ensure(heavy_model.heavy_config(args.heavy_model_dir))
        images = write_image_set(
            args.image_root / f"fmnist-test-224-jpg-{n_heavy}",
            count=n_heavy,
            size=224,
            channels=3,
            fmt="JPEG",
        )
        cases.append(ModelCase("heavy", heavy, images, args.heavy_duration))
    return cases


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="2 s per point, c=1,8: a smoke test")
    p.add_argument(
        "--models", nargs="+", default=["bundled", "heavy"], choices=["bundled", "heavy"]
    )
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    p.add_argument("--concurrency", type=int, nargs="+", default=None, help="default 1 8 32 64")
    p.add_argument("--duration", type=float, default=None, help="s per point, bundled (8)")
    p.add_argument("--heavy-duration", type=float, default=None, help="s per point, heavy (10)")
    p.add_argument("--warmup", type=float, default=None, help="s of load before measuring (3)")
    p.add_argument("--model-dir", type=Path, default=Path("models/fashion-mnist-lt"))
    p.add_argument(
        "--stand-in", action="store_true", help="resnet32 stand-in if model-dir lacks one"
    )
    p.add_argument("--heavy-model-dir", type=Path, default=Path("runs/bench-models/resnet50-224"))
    p.add_argument("--images", type=Path, default=None, help="dir with labels.tsv (bundled model)")
    p.add_argument("--image-root", type=Path, default=Path("runs/bench-images"))
    p.add_argument("--out", type=Path, default=None, help="default bench/results (quick: runs/)")
    p.add_argument("--pages", type=Path, default=None, help=f"page folder (default {pages.PAGES})")
    p.add_argument("--log-dir", type=Path, default=Path("runs/bench-http-logs"))
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument(
        "--elf-env",
        nargs="+",
        default=[],
        metavar="ELF_X=V",
        help="extra elf-serve settings (default: its own), e.g. ELF_MAX_QUEUE_DELAY_MS=0",
    )
    p.add_argument("--name", default="http", help="results file stem (default http)")
    p.add_argument(
        "--no-in-process",
        dest="in_process",
        action="store_false",
        help="skip the in-process limit (full.onnx at batch 32, measured before the servers)",
    )
    args = p.parse_args(argv)
    q = args.quick
    args.concurrency = args.concurrency or ([1, 8] if q else [1, 8, 32, 64])
    args.duration = args.duration or (2.0 if q else 8.0)
    args.heavy_duration = args.heavy_duration or (2.0 if q else 10.0)
    args.warmup = args.warmup or (1.0 if q else 3.0)
    args.out = args.out or (Path("runs/bench-quick") if q else pages.RESULTS)
    args.pages = args.pages or (args.out if q else pages.PAGES)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if argv[:1] == ["report"]:
        return report_main(argv[1:])
    args = parse_args(argv)
    result = machine.stamp("http")
    t0 = time.monotonic()
    cases = model_cases(args)
    limits = {c.key: in_process_full(c) for c in cases} if args.in_process else {}
    rows: list[dict[str, Any]] = []
    for case in cases:
        rows += run_case(case, args)
    result |= {
        "wall_s": round(time.monotonic() - t0, 1),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "models": {c.key: model_info(c) for c in cases},
        "in_process": limits,
        "rows": rows,
    }
    out = args.out / f"{args.name}.json"
    pages.save(result, out)
    log.info("wrote %s and %s", out, write_report([(out, result)], args.pages))
    return 0


def report_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench http report", description=__doc__)
    p.add_argument("--results", type=Path, nargs="+", default=None, help="bench/results/http-*")
    p.add_argument("--pages", type=Path, default=pages.PAGES)
    a = p.parse_args(argv)
    paths = a.results or sorted(pages.RESULTS.glob("http-*.json"))
    log.info("wrote %s", write_report([(path, pages.load(path)) for path in paths], a.pages))
    return 0


def in_process_full(case: ModelCase, batch: int = 32, seconds: float = 5.0) -> dict[str, Any]:
    """full.onnx at batch 32 in this process with the server's session settings (bench.engine's
    case): the images/s that bounds every full-depth server; the exit mix divides it (report)."""
    from bench import engine  # noqa: PLC0415  (ONNX Runtime sessions; only here)

    c = engine.load_case(case.key, case.model_dir, case.images, [batch], [batch])
    runs, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or runs < 3:
        engine.run_full(c, batch)
        runs += 1
    per_s = runs * len(c.x) / (time.perf_counter() - t0)
    log.info("%s: full.onnx batch %d in process: %.1f images/s", case.key, batch, per_s)
    return {"batch": batch, "full_images_per_s": round(per_s, 2)}


def model_info(case: ModelCase) -> dict[str, Any]:
    m = json.loads((case.model_dir / "manifest.json").read_text(encoding="utf-8"))
    full = m["flops_full"]
    cal = m.get("calibration") or {}
    return {
        "dir": str(case.model_dir),
        "name": m["name"],
        "architecture": m["provenance"]["architecture"],
        "method": m["provenance"]["method"],
        "input": [m["preprocessing"][k] for k in ("channels", "height", "width")],
        "flops_full": full,
        "thresholds": [e["threshold"] for e in m["exits"]],
        "cumulative_flops_ratio": [round(e["cumulative_flops"] / full, 4) for e in m["exits"]],
        "calibration_chosen": cal.get("chosen"),
        "images": len(case.images),
        "image_dir": str(case.images.directory),
        "duration_s": case.duration_s,
    }


if __name__ == "__main__":
    sys.exit(main())
