"""GPU smoke run: everything the CUDA path needs checked and timed once, into one JSON report.

On a machine with a GPU (see bench/GPU.md for carrying the onnxruntime-gpu wheel there):

    python -m bench gpu --carried .gpu --out $OUT/gpu_smoke.json

  install     joins the wheel parts under --carried, installs them into --site (no index, no deps)
              and runs the rest in a fresh interpreter with that site first on the path
  environment onnxruntime version and providers, whether a CUDA session really starts, the GPU
  gpu_tests   tests/server/test_gpu.py under ELF_REQUIRE_GPU=1 (placement, host copies, parity
              per exit with TF32 off, memory after 3000 random batches, the server)
  warm_up     per cuDNN search mode (HEURISTIC, EXHAUSTIVE), on the bundled model: session
              creation, first-call and second-call latency per batch size 1..32, GPU memory after
              load / warm-up / 2,000 random-size batches (the heuristic sessions)
  runner      stages chained with the server's runner vs full.onnx, per image, batch 1/8/32, on
              the heavy model (--heavy-model-dir, built by bench.heavy_model when torch and the
              Fashion-MNIST files are there) and the bundled one

Every step is timed and its failure recorded (the script goes on); steps that would start after
--budget-s are skipped. Exit status 1 when a check failed. `--dry-run` runs the same steps here on
the CPU with small counts (tests/bench/test_gpu_smoke.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import machine

log = logging.getLogger("bench.gpu_smoke")

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models" / "fashion-mnist-lt"
PART = ".part-"  # wheel parts: NAME.whl.part-000, NAME.whl.part-001, ...


def join_parts(carried: Path, dest: Path) -> list[Path]:
    """Every wheel under `carried`: whole ones as they are, split ones joined in part order.

    A SHA256SUMS file there (`sha256sum *.whl` output, made before splitting) is checked."""
    dest.mkdir(parents=True, exist_ok=True)
    wheels: list[Path] = sorted(carried.glob("*.whl"))
    parts: dict[str, list[Path]] = {}
    for p in sorted(carried.glob(f"*.whl{PART}*")):
        parts.setdefault(p.name.split(PART)[0], []).append(p)
    for name, pieces in sorted(parts.items()):
        out = dest / name
        with out.open("wb") as f:
            for piece in sorted(pieces, key=lambda q: int(q.name.split(PART)[1])):
                f.write(piece.read_bytes())
        wheels.append(out)
    sums = carried / "SHA256SUMS"
    if sums.is_file():
        # `sha256sum` lines: "<digest>  <file name>"
        expected = {n: d for d, n in (ln.split() for ln in sums.read_text().splitlines() if ln)}
        for w in wheels:
            digest = hashlib.sha256(w.read_bytes()).hexdigest()
            if w.name in expected and expected[w.name] != digest:
                raise RuntimeError(f"{w.name}: sha256 {digest} != {expected[w.name]} (SHA256SUMS)")
    return wheels


def install(carried: Path, site: Path) -> list[str]:
    wheels = join_parts(carried, site.parent / "wheels")
    if not wheels:
        raise RuntimeError(f"{carried}: no *.whl or *.whl{PART}N files")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    cmd += ["--no-compile", "--upgrade", "--target", str(site), *map(str, wheels)]
    subprocess.run(cmd, check=True)
    return [w.name for w in wheels]


class Report:
    """Steps run in order under one time budget; each records its result or its error."""

    def __init__(self, budget_s: float) -> None:
        self.t0 = time.monotonic()
        self.budget_s = budget_s
        self.data: dict[str, Any] = {"steps": {}}
        self.failed: list[str] = []

    def step(self, name: str, fn: Callable[[], Any]) -> None:
        elapsed = time.monotonic() - self.t0
        if elapsed > self.budget_s:
            self.data["steps"][name] = {
                "status": "skipped",
                "reason": f"budget spent ({elapsed:.0f} s)",
            }
            return
        log.info("step %s", name)
        t = time.monotonic()
        try:
            result = fn()
            entry = {"status": "ok", "result": result}
        except Exception as exc:  # a failed check is recorded, the other steps still run
            entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            entry["traceback"] = traceback.format_exc(limit=8)
            self.failed.append(name)
            log.exception("step %s failed", name)
        entry["wall_s"] = round(time.monotonic() - t, 2)
        self.data["steps"][name] = entry


def environment(device_id: int) -> dict[str, Any]:
    import onnxruntime as ort  # noqa: PLC0415

    from bench.gpu_tools import gpu_memory_used_mib  # noqa: PLC0415
    from server.engine.placement import probe_cuda  # noqa: PLC0415

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    smi = None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        smi = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "python": sys.version.split()[0],
        "onnxruntime": ort.__version__,
        "onnxruntime_file": ort.__file__,
        "available_providers": ort.get_available_providers(),
        "cuda_unusable_reason": probe_cuda(device_id),
        "nvidia_smi": smi,
        "gpu_memory_used_mib": gpu_memory_used_mib(device_id),
    }


def gpu_tests(dry_run: bool) -> dict[str, Any]:
    env = dict(os.environ)
    # the installed site (if any) stays first on the path, then this checkout
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
    if not dry_run:
        env["ELF_REQUIRE_GPU"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA"]
    cmd += ["tests/server/test_gpu.py"]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    result = {"returncode": proc.returncode, "summary": summary, "tail": proc.stdout[-6000:]}
    if proc.returncode != 0:
        raise RuntimeError(f"test_gpu.py: {summary}\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return result


def heavy_model_dir(args: argparse.Namespace) -> Path:
    if (args.heavy_model_dir / "manifest.json").is_file():
        return args.heavy_model_dir
    from bench import heavy_model  # noqa: PLC0415 (torch; only where the model must be built)

    return heavy_model.ensure(heavy_model.heavy_config(args.heavy_model_dir))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dry-run", action="store_true", help="CPU, small counts: a test of the script")
    p.add_argument("--carried", type=Path, default=None, help="folder of wheels / wheel parts")
    p.add_argument("--site", type=Path, default=Path("/tmp/elf-gpu/site"))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--device-id", type=int, default=0)
    p.add_argument("--budget-s", type=float, default=450.0, help="no step starts after this")
    p.add_argument("--heavy-model-dir", type=Path, default=ROOT / "runs/bench-models/resnet50-224")
    p.add_argument("--skip", nargs="*", default=[], help="steps to leave out")
    args = p.parse_args(argv)
    dry = args.dry_run
    args.providers = "cpu" if dry else "cuda"
    args.sizes = [1, 2, 4] if dry else list(range(1, 33))
    args.bench_sizes = [1, 4] if dry else [1, 8, 32]
    args.batches = 50 if dry else 2000
    args.reps = 1 if dry else 5
    if args.out is None:
        base = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
        default = ROOT / ("runs/gpu-smoke" if dry else "bench/results")
        args.out = (base or default) / "gpu_smoke.json"
    return args


def run_installed(argv: list[str], args: argparse.Namespace) -> int:
    """Install the carried wheels, then run this script again with them first on the path."""
    names = install(args.carried, args.site)
    log.info("installed %s into %s", ", ".join(names), args.site)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(args.site), str(ROOT)) if p)
    env["ELF_GPU_SMOKE_WHEELS"] = ",".join(names)
    rest, skip_next = [], False
    for a in argv:  # the same arguments less --carried DIR (the child must not install again)
        if skip_next or a == "--carried" or a.startswith("--carried="):
            skip_next = a == "--carried"
            continue
        rest.append(a)
    cmd = [sys.executable, "-m", "bench.gpu_smoke", *rest]
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.carried is not None and not args.dry_run:
        return run_installed(argv, args)
    # Only now: before the install this interpreter may lack onnxruntime-gpu and pydantic.
    from bench import gpu_timing  # noqa: PLC0415

    report = Report(args.budget_s)
    report.data |= machine.stamp("gpu") | {
        "dry_run": args.dry_run,
        "wheels": os.environ.get("ELF_GPU_SMOKE_WHEELS", ""),
    }
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("environment", lambda: environment(args.device_id)),
        ("gpu_tests", lambda: gpu_tests(args.dry_run)),
        ("warm_up", lambda: gpu_timing.warm_up_timing(BUNDLED, args)),
        ("runner_bundled", lambda: gpu_timing.runner_bench(BUNDLED, args)),
    ]
    if not args.dry_run:
        steps.append(("runner_heavy", lambda: gpu_timing.runner_bench(heavy_model_dir(args), args)))
    for name, fn in steps:
        if name not in args.skip:
            report.step(name, fn)
    report.data["failed"] = report.failed
    report.data["wall_s"] = round(time.monotonic() - report.t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report.data, indent=1, default=str) + "\n", encoding="utf-8")
    log.info("wrote %s in %.0f s; failed: %s", args.out, report.data["wall_s"], report.failed)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
