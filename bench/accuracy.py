"""Accuracy benchmark: ELF against its baselines on Fashion-MNIST-LT (rho 100) with resnet32.

Every row trains with the same epochs and seeds; each (row, seed) has its own output directory,
so rows can run separately, and an interrupted run resumes (a finished one is skipped). ELF is
judged with early-exit inference, thresholds calibrated on the validation split, reported on test.

    python -m bench.accuracy --epochs 30 --seeds 0 1 2            # the seven main rows
    python -m bench.accuracy --rows elf-ce elf-ce-warmup5          # some rows only
    python -m bench.accuracy --add-row "elf-ce-t08=--method elf --loss ce --tau-train 0.8"
    python -m bench.accuracy --report-only                         # tables from finished runs
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.accuracy_report import write_report

log = logging.getLogger("bench.accuracy")

MAIN_ROWS: dict[str, str] = {
    "standard-ce": "--method standard --loss ce",
    "multi-exit-ce": "--method multi-exit --loss ce",
    "elf-ce": "--method elf --loss ce",
    "standard-ldam": "--method standard --loss ldam",
    "elf-ldam": "--method elf --loss ldam",
    "standard-bs": "--method standard --loss balanced_softmax",
    "elf-bs": "--method elf --loss balanced_softmax",
}
# ELF variants to investigate (select them with --rows); thresholds are always chosen on val.
VARIANT_ROWS: dict[str, str] = {
    "multi-exit-ldam": "--method multi-exit --loss ldam",
    "multi-exit-bs": "--method multi-exit --loss balanced_softmax",
    "elf-ce-warmup5": "--method elf --loss ce --elf-warmup-epochs 5",
    "elf-ce-tau07": "--method elf --loss ce --tau-train 0.7",
    "elf-ce-tau-per-exit": "--method elf --loss ce --tau-train 0.95 0.9",
    "elf-ce-exited01": "--method elf --loss ce --exited-weight 0.1",
    "elf-ce-weights": "--method elf --loss ce --exit-weights 0.5 0.75 1.0",
    "elf-ce-convhead": "--method elf --loss ce --head conv_pool_linear",
    "elf-bs-warmup5": "--method elf --loss balanced_softmax --elf-warmup-epochs 5",
    "elf-bs-exited01": "--method elf --loss balanced_softmax --exited-weight 0.1",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--rows",
        nargs="+",
        default=list(MAIN_ROWS),
        help="rows to run (default: the main rows). Known: "
        + ", ".join([*MAIN_ROWS, *VARIANT_ROWS]),
    )
    p.add_argument(
        "--add-row",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="define and run an extra row: its elf-train arguments",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="training seeds per row (default %(default)s)",
    )
    p.add_argument("--epochs", type=int, default=30, help="epochs per row (default %(default)s)")
    p.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs/bench-accuracy"),
        help="one sub-directory per row and seed (default %(default)s)",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=Path("bench/results/accuracy"),
        help="writes RESULTS.md and RESULTS.json (default %(default)s)",
    )
    p.add_argument(
        "--train-args",
        default="",
        help="extra elf-train arguments for every row (e.g. '--threads 2')",
    )
    p.add_argument(
        "--report-only", action="store_true", help="no training: tables from the finished runs"
    )
    p.add_argument("--progress", action="store_true", help="tqdm bars in the training runs")
    return p.parse_args(argv)


def row_table(args: argparse.Namespace) -> dict[str, str]:
    """The selected rows with their elf-train arguments, in order."""
    known = {**MAIN_ROWS, **VARIANT_ROWS}
    for spec in args.add_row:
        name, sep, extra = spec.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--add-row needs NAME=ARGS, got {spec!r}")
        known[name.strip()] = extra
    rows = list(dict.fromkeys([*args.rows, *(s.partition("=")[0].strip() for s in args.add_row)]))
    unknown = [r for r in rows if r not in known]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {sorted(known)}")
    return {r: known[r] for r in rows}


def run_dir(args: argparse.Namespace, row: str, seed: int) -> Path:
    return args.runs_dir / f"{row}-e{args.epochs}-s{seed}"


def train_command(args: argparse.Namespace, row_args: str, out: Path, seed: int) -> list[str]:
    cmd = [sys.executable, "-m", "training.cli", "--dataset", "fashion-mnist-lt"]
    cmd += ["--imbalance-ratio", "100", "--arch", "resnet32", "--epochs", str(args.epochs)]
    cmd += ["--seed", str(seed), "--out", str(out), "--resume"]
    cmd += shlex.split(row_args) + shlex.split(args.train_args)
    return cmd if args.progress else [*cmd, "--no-progress"]


def run_rows(args: argparse.Namespace, rows: dict[str, str]) -> list[str]:
    """Train every (row, seed) without a metrics.json; returns the failures."""
    failed: list[str] = []
    for row, row_args in rows.items():
        for seed in args.seeds:
            out = run_dir(args, row, seed)
            if (out / "metrics.json").is_file():
                log.info("%s seed %d: finished before, skipped (%s)", row, seed, out)
                continue
            cmd = train_command(args, row_args, out, seed)
            log.info("%s seed %d: %s", row, seed, shlex.join(cmd))
            start = time.perf_counter()
            if subprocess.run(cmd, check=False).returncode != 0:
                failed.append(f"{row} seed {seed}")
                log.error("%s seed %d failed; see the log above", row, seed)
                continue
            log.info("%s seed %d: done in %.0f s", row, seed, time.perf_counter() - start)
    return failed


def collect(args: argparse.Namespace, rows: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """metrics.json of every finished (row, seed)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        for seed in args.seeds:
            path = run_dir(args, row, seed) / "metrics.json"
            if path.is_file():
                found.setdefault(row, []).append(json.loads(path.read_text()))
    return found


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    rows = row_table(args)
    failed = [] if args.report_only else run_rows(args, rows)
    results = collect(args, rows)
    if not results:
        log.error("no finished runs under %s", args.runs_dir)
        return 1
    command = shlex.join(
        ["python", "-m", "bench.accuracy", *(argv if argv is not None else sys.argv[1:])]
    )
    write_report(args.results, results, rows, command=command, epochs=args.epochs, seeds=args.seeds)
    log.info("wrote %s.md and %s.json", args.results, args.results)
    if failed:
        log.error("failed: %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
