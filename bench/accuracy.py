"""Accuracy benchmark: ELF against its baselines on Fashion-MNIST-LT (rho 100) with resnet32.

Every row trains with the same epochs and seeds; each (row, seed) has its own output directory,
so rows can run separately, and an interrupted run resumes (a finished one is skipped). ELF is
judged with early-exit inference, thresholds calibrated on the validation split, reported on test.
Each finished run becomes a seed's record in its row's committed result file
(bench/results/accuracy/<row>.json, format in bench.accuracy_runs) and the page
(docs/benchmarks/accuracy.md) is built from those files alone.

    python -m bench accuracy --epochs 30 --seeds 0 1 2            # train the main rows, collect
    python -m bench accuracy --rows elf-bs-warmup5 --seeds 0       # some rows only
    python -m bench accuracy --add-row "elf-ce-t08=--method elf --loss ce --tau-train 0.8"
    python -m bench accuracy collect --runs-dir runs/bench-accuracy   # finished runs -> files
    python -m bench accuracy fold OLD/elf-bs-s1.json ...   # per-seed files of the earlier layout
    python -m bench accuracy report                                # report from the files
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import accuracy_ensemble as ensemble
from bench import pages
from bench.accuracy_difficulty import measure
from bench.accuracy_report import write_report
from bench.accuracy_runs import fold, from_run, load_results, write_result

log = logging.getLogger("bench.accuracy")

MAIN_ROWS: dict[str, str] = {
    "standard-ce": "--method standard --loss ce",
    "multi-exit-ce": "--method multi-exit --loss ce",
    "elf-ce": "--method elf --loss ce",
    "standard-ldam": "--method standard --loss ldam",
    "standard-bs": "--method standard --loss balanced_softmax",
    "elf-bs": "--method elf --loss balanced_softmax",
}
# Fashion-MNIST's classes from easiest to hardest: per-class validation recall of a standard
# resnet32 trained on balanced data (`python -m bench accuracy difficulty`). In this order the
# rarest third are the three hardest classes, as users' rare classes usually are.
HARD_ORDER = "7 8 1 5 9 3 0 2 4 6"
HARD_ROWS: dict[str, str] = {
    f"{row}-hard": f"{MAIN_ROWS[row]} --class-order {HARD_ORDER}"
    for row in ("standard-bs", "elf-bs")
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
    "elf-bs-tau-per-exit": "--method elf --loss balanced_softmax --tau-train 0.95 0.8",
    "elf-bs-weights": "--method elf --loss balanced_softmax --exit-weights 0.5 0.75 1.0",
}
# What the page expects: its "Not run yet" section lists what is missing.
PLAN: dict[str, tuple[int, ...]] = {
    **{r: (0, 1, 2) for r in ("standard-bs", "multi-exit-bs", "elf-bs")},
    **{r: (0,) for r in ("standard-ce", "multi-exit-ce", "elf-ce", "standard-ldam")},
    **{r: (0, 1, 2) for r in HARD_ROWS},
    **{r: (0,) for r in ("elf-bs-exited01", "elf-bs-warmup5", "elf-bs-tau-per-exit",
                         "elf-bs-weights")},
}  # fmt: skip
TRAIN_ARGS = "--threads 1 --eval-every 5"  # what the committed runs used
RUN_DIR = re.compile(r"^(?P<row>.+)-e(?P<epochs>\d+)-s(?P<seed>\d+)$")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--rows",
        nargs="+",
        default=list(MAIN_ROWS),
        help="rows to run (default: the main rows). Known: "
        + ", ".join([*MAIN_ROWS, *HARD_ROWS, *VARIANT_ROWS]),
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
        "--train-args",
        default="",
        help="extra elf-train arguments for every row (e.g. '--threads 2')",
    )
    p.add_argument("--progress", action="store_true", help="tqdm bars in the training runs")
    _outputs(p)
    return p.parse_args(argv)


def _outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--results-dir",
        type=Path,
        default=Path("bench/results/accuracy"),
        help="one result file per row (default %(default)s)",
    )
    p.add_argument(
        "--pages",
        type=Path,
        default=pages.PAGES,
        help="writes PAGES/accuracy.md (default %(default)s)",
    )


def row_table(args: argparse.Namespace) -> dict[str, str]:
    """The selected rows with their elf-train arguments, in order."""
    known = {**MAIN_ROWS, **HARD_ROWS, **VARIANT_ROWS}
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


def collect_runs(
    runs_dir: Path, results_dir: Path, *, train_args: str, commit: str | None
) -> list[Path]:
    """A result file for every finished <row>-e<epochs>-s<seed> run of a known row."""
    known = {**MAIN_ROWS, **HARD_ROWS, **VARIANT_ROWS}
    written = []
    for run in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []:
        m = RUN_DIR.match(run.name)
        if not m or m["row"] not in known or not (run / "metrics.json").is_file():
            continue
        ns = argparse.Namespace(epochs=int(m["epochs"]), train_args=train_args, progress=False)
        cmd = train_command(ns, known[m["row"]], run, int(m["seed"]))
        command = shlex.join(["elf-train", *cmd[3:]])  # the documented entry point
        result = from_run(run, m["row"], known[m["row"]], command=command, commit=commit)
        written.append(write_result(results_dir, result))
        log.info("%s -> %s", run, written[-1])
    return written


def missing_lines(results: list[dict[str, Any]]) -> list[str]:
    """Planned (row, seed) pairs without a result file, with the command that makes them."""
    have = {(r["row"], r["seed"]) for r in results}
    out = []
    for row, seeds in PLAN.items():
        todo = [s for s in seeds if (row, s) not in have]
        if todo:
            cmd = ["python", "-m", "bench", "accuracy", "--epochs", "30", "--seeds",
                   *map(str, todo), "--rows", row, "--train-args", TRAIN_ARGS]  # fmt: skip
            out.append(f"- `{row}` seeds {todo}: `{shlex.join(cmd)}`")
    return out


def report(results_dir: Path, folder: Path) -> int:
    results = load_results(results_dir)
    if not results:
        log.error("no result files in %s", results_dir)
        return 1
    order = list(dict.fromkeys([*PLAN, *MAIN_ROWS, *HARD_ROWS, *VARIANT_ROWS]))
    main = ["standard-bs", "elf-bs", *HARD_ROWS]  # each class order's standard model first
    path = write_report(
        folder, results_dir, results, order, main=main, missing=missing_lines(results)
    )
    log.info("wrote %s from %d result files", path, len(results))
    return 0


def _sub_parser(name: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m bench accuracy {name}", description=doc)
    _outputs(p)
    if name in ("collect", "difficulty"):
        p.add_argument("--runs-dir", type=Path, default=Path("runs/bench-accuracy"))
    if name == "collect":
        p.add_argument(
            "--train-args",
            default=TRAIN_ARGS,
            help="runs that did not record their command: the extra elf-train arguments they "
            "were started with (default %(default)r)",
        )
        p.add_argument(
            "--train-commit", help="runs that did not record their commit: the training code's"
        )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        a = _sub_parser("report", "The report from the result files.").parse_args(argv[1:])
        return report(a.results_dir, a.pages)
    if argv[:1] == ["difficulty"]:
        a = _sub_parser("difficulty", "Class difficulty on balanced data.").parse_args(argv[1:])
        measure(a.runs_dir)
        return report(a.results_dir, a.pages)
    if argv[:1] == ["fold"]:
        p = _sub_parser("fold", "Per-seed result files (<row>-s<seed>.json) into row files.")
        p.add_argument("files", type=Path, nargs="+")
        a = p.parse_args(argv[1:])
        fold(a.files, a.results_dir)
        return report(a.results_dir, a.pages)
    if argv[:1] == ["ensemble"]:
        p = _sub_parser(
            "ensemble", "Recycled predictions on a model directory (bench.accuracy_ensemble)."
        )
        p.add_argument("--model-dir", type=Path, required=True, help="an exported model directory")
        p.add_argument("--row", required=True, help="the accuracy row the model is a seed of")
        p.add_argument("--seed", type=int, required=True)
        a = p.parse_args(argv[1:])
        ensemble.run(a.model_dir, a.row, a.seed, a.results_dir)
        return report(a.results_dir, a.pages)
    if argv[:1] == ["collect"]:
        doc = "Result files from finished run directories, then the report."
        a = _sub_parser("collect", doc).parse_args(argv[1:])
        collect_runs(a.runs_dir, a.results_dir, train_args=a.train_args, commit=a.train_commit)
        return report(a.results_dir, a.pages)
    args = parse_args(argv)
    rows = row_table(args)
    failed = run_rows(args, rows)
    collect_runs(args.runs_dir, args.results_dir, train_args=args.train_args, commit=None)
    rc = report(args.results_dir, args.pages)
    if failed:
        log.error("failed: %s", ", ".join(failed))
    return 1 if failed else rc


if __name__ == "__main__":
    sys.exit(main())
