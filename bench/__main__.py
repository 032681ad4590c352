"""The benchmarks' one entry point: `python -m bench NAME [ARGS]`, `python -m bench NAME report`.

Every benchmark writes one JSON under bench/results/ (its command, the commit and the hardware
beside the numbers) and a page under docs/benchmarks/ generated from it; `report` regenerates
the page from the committed JSON without timing anything.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module with main(argv), what it measures)
BENCHMARKS = {
    "accuracy": ("bench.accuracy", "ELF against its baselines: balanced and tail accuracy, "
                 "FLOPs saved (trains the rows; `collect`, `report`)"),
    "engine": ("bench.engine", "the early-exit engine in process against full.onnx, with a "
               "per-stage trace of the batcher (`--twice`, `--trace`, `report`)"),
    "http": ("bench.http", "elf-serve over HTTP (wrk) against LitServe, KServe, Ray Serve and "
             "plain FastAPI (`report`)"),
    "protocols": ("bench.protocols", "gRPC against HTTP (binary, JSON) with tritonclient, and "
                  "the latency cost of a version swap (`report`)"),
    "retrofit": ("bench.retrofit", "early exits added to existing ONNX classifiers "
                 "(`heavy`, `fmnist`, `report`)"),
    "gpu": ("bench.gpu_smoke", "the CUDA path checked and timed once (bench/GPU.md)"),
    "heavy-model": ("bench.heavy_model", "builds the resnet50-style benchmark model (random "
                    "backbone, fitted exit heads); the others build it when needed"),
}  # fmt: skip
PAGES = ("accuracy", "engine", "http", "protocols", "retrofit")  # the ones with a committed result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    listing = "\n".join(f"  {name:<12} {doc}" for name, (_, doc) in BENCHMARKS.items())
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        epilog=f"benchmarks:\n{listing}\n  {'pages':<12} every page again from the "
        "committed results ([--pages DIR])",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=[*BENCHMARKS, "pages"], help="the benchmark to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments (NAME --help)")
    a = p.parse_args(argv[:1])
    if a.name == "pages":  # optional: --pages DIR
        return max(run(name, ["report", *argv[1:]]) for name in PAGES)
    return run(a.name, argv[1:])


def run(name: str, argv: list[str]) -> int:
    module = importlib.import_module(BENCHMARKS[name][0])
    return int(module.main(argv) or 0)


if __name__ == "__main__":
    sys.exit(main())
