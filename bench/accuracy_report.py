"""The accuracy report (markdown + JSON), built only from the committed per-run result files.

Every number is a mean ± sample standard deviation over the seeds a row has (the std is shown
only with two seeds or more).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bench import pages
from bench.accuracy_difficulty import section
from elf_core.calibration import DEFAULT_TOLERANCE

GROUPS = ("head", "middle", "tail")
Stat = dict[str, float | int | None]


def stat(values: Sequence[float | None]) -> Stat:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.fmean(vals), "std": std, "n": len(vals)}


def _point(runs: list[dict[str, Any]], get: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    points = [get(r) for r in runs]
    keys = ("balanced_top1", *GROUPS, "flops_saved")
    return {k: stat([p.get(k) for p in points]) for k in keys if k in points[0]}


def _tail_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per tail tolerance (None: plain calibration): test numbers and the differences to plain,
    over the runs that have tail-protected results."""
    have = [r for r in runs if r["tail_protected"]]
    if not have:
        return []
    out = []
    for i, entry in enumerate(have[0]["tail_protected"]):
        pts = [r["tail_protected"][i]["test"] for r in have]
        plain = [r["tail_protected"][0]["test"] for r in have]
        out.append({
            "tail_tolerance": entry["tail_tolerance"], "seeds": [r["seed"] for r in have],
            **{k: stat([p[k] for p in pts]) for k in ("balanced_top1", "tail", "flops_saved")},
            "tail_gain": stat([p["tail"] - q["tail"] for p, q in zip(pts, plain, strict=True)]),
            "flops_cost": stat([q["flops_saved"] - p["flops_saved"]
                                for p, q in zip(pts, plain, strict=True)]),
        })  # fmt: skip
    return out


def _exit(r: dict[str, Any], k: int) -> dict[str, Any]:
    exit_k: dict[str, Any] = r["test"]["exits"][k]
    return exit_k


def _val_chosen(r: dict[str, Any]) -> dict[str, Any]:
    return r["val"]["chosen"] or {"balanced_top1": None}  # None: not kept (imported runs)


def summarize_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Test points over the seeds; a training row (one with validation numbers, not a row of
    another tool) also its exits, validation and tail-protected points."""
    out = {
        "seeds": [r["seed"] for r in runs],
        "variant": runs[0].get("variant"),
        "best": _point(runs, lambda r: r["test"]["best"]),
        "chosen": _point(runs, lambda r: r["test"]["chosen"]),
    }
    if "val" not in runs[0]:
        return out
    k = len(runs[0]["test"]["exits"])
    return out | {
        "method": runs[0]["method"],
        "loss": runs[0]["loss"],
        "row_args": runs[0]["row_args"],
        "exits": [_point(runs, partial(_exit, k=i)) for i in range(k)],
        "val_best_balanced_top1": stat([r["val"]["best"]["balanced_top1"] for r in runs]),
        "val_chosen": _point(runs, _val_chosen),
        "tail_protected": _tail_rows(runs),
    }


def summarize(results: list[dict[str, Any]], order: Sequence[str]) -> dict[str, Any]:
    """Rows in `order` first (then any other), each over its seeds in ascending order."""
    by_row: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(results, key=lambda r: r["seed"]):
        by_row.setdefault(r["row"], []).append(r)
    names = [n for n in order if n in by_row] + sorted(set(by_row) - set(order))
    return {n: summarize_row(by_row[n]) for n in names}


def pct(s: Stat | None) -> str:
    if s is None or s["mean"] is None:
        return "-"
    text = f"{100 * float(s['mean']) + 0.0:.1f}".replace("-0.0", "0.0")  # no "-0.0"
    return text + (f" ± {100 * float(s['std'] or 0):.1f}" if int(s["n"] or 0) > 1 else "")


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _main_table(summary: dict[str, Any]) -> list[str]:
    head = [
        "row",
        "seeds",
        "final exit alone",
        "best: balanced",
        "best: tail",
        "best: FLOPs saved",
        "≤0.5 pt: balanced",
        "≤0.5 pt: tail",
        "≤0.5 pt: FLOPs saved",
    ]
    rows = [[n, ",".join(map(str, s["seeds"])), pct(s["exits"][-1]["balanced_top1"]),
             *(pct(s[p][k]) for p in ("best", "chosen")
               for k in ("balanced_top1", "tail", "flops_saved"))]
            for n, s in summary.items()]  # fmt: skip
    return _table(head, rows)


def _groups_table(summary: dict[str, Any]) -> list[str]:
    k = max(len(s["exits"]) for s in summary.values())
    head = ["row", *(f"exit {i} alone" for i in range(k - 1)), "final exit alone",
            "early exit, best", "early exit, ≤0.5 pt"]  # fmt: skip
    rows = []
    for n, s in summary.items():
        pts = [*s["exits"], s["best"], s["chosen"]]
        rows.append([n, *(" / ".join(pct(p[g]) for g in ("balanced_top1", *GROUPS)) for p in pts)])
    return _table(head, rows)


def _tail_table(summary: dict[str, Any]) -> list[str]:
    head = ["row", "seeds", "tail tolerance", "balanced", "tail", "FLOPs saved",
            "tail gained vs plain", "FLOPs saved given up vs plain"]  # fmt: skip
    rows = []
    for n, s in summary.items():
        for t in s["tail_protected"]:
            tol = "plain" if t["tail_tolerance"] is None else f"{100 * t['tail_tolerance']:g} pt"
            rows.append([n, ",".join(map(str, t["seeds"])), tol, pct(t["balanced_top1"]),
                         pct(t["tail"]), pct(t["flops_saved"]), pct(t["tail_gain"]),
                         pct(t["flops_cost"])])  # fmt: skip
    return _table(head, rows) if rows else ["(no run with saved predictions yet)"]


def _val_table(summary: dict[str, Any]) -> list[str]:
    head = ["row", "seeds", "val best: balanced", "val ≤0.5 pt: balanced", "val ≤0.5 pt: tail",
            "val ≤0.5 pt: FLOPs saved"]  # fmt: skip
    rows = [[n, ",".join(map(str, s["seeds"])), pct(s["val_best_balanced_top1"]),
             *(pct(s["val_chosen"].get(k)) for k in ("balanced_top1", "tail", "flops_saved"))]
            for n, s in summary.items()]  # fmt: skip
    return _table(head, rows)


INTRO = """Balanced top-1 (%) on the balanced test set of {dataset} ({arch}, {epochs} epochs).
Early-exit thresholds are chosen on the validation split, never on test: 'best' is the best
point of the threshold curve, '≤0.5 pt' the cheapest point within 0.5 points of it. Tail = the
third of the classes with the fewest training images ({tail}). FLOPs saved = 1 - expected
executed / backbone FLOPs (exit heads included in executed). Mean ± sample std over the seeds
listed."""


def class_order_of(result: dict[str, Any]) -> str:
    """'default', or the classes head to tail of a run trained with --class-order."""
    _, sep, order = str(result["dataset"]).partition("-order")
    return "default" if not sep else order.replace(".", " ")


def _title(o: str) -> str:
    if o == "default":
        return "Default class order (class 0 the head)"
    return f"Class order {o} (head to tail: the hardest classes are the rarest)"


def _tables_by_order(summary: dict[str, Any], orders: dict[str, str]) -> list[str]:
    """The table of every training row once per class order (the default order first)."""
    md: list[str] = []
    for o in sorted(set(orders.values()), key=lambda o: (o != "default", o)):
        rows = {n: s for n, s in summary.items() if orders[n] == o and "exits" in s}
        md += [f"### {_title(o)}", "", *_main_table(rows), ""] if rows else []
    return md


def row_orders(results: list[dict[str, Any]]) -> dict[str, str]:
    """Each row's class order; a variant without a dataset has its base row's."""
    first = {r["row"]: r for r in results}

    def order(name: str) -> str:
        r = first[name]
        return class_order_of(r) if "dataset" in r else order(r["variant"]["of"])

    return {n: order(n) for n in first}


KEYS = ("balanced_top1", "tail", "flops_saved")
GOAL_SAVED, GOAL_PT = 0.5, 0.002  # the goal: >= 50% FLOPs saved within 0.2 pt of standard


def goal(s: dict[str, Any], ref: dict[str, Any]) -> str:
    """Whether a point (best or chosen) saves GOAL_SAVED of the FLOPs with balanced and tail
    top-1 (means) within GOAL_PT of the standard row's; else by how much it misses."""
    points = [s[p] for p in ("best", "chosen")]
    saved = max(p["flops_saved"]["mean"] for p in points)
    if saved < GOAL_SAVED:
        return f"missed: at most {100 * saved:.1f}% FLOPs saved"
    gap = min(max(ref["best"][k]["mean"] - p[k]["mean"] for k in ("balanced_top1", "tail"))
              for p in points if p["flops_saved"]["mean"] >= GOAL_SAVED)  # fmt: skip
    return "met" if gap <= GOAL_PT else f"missed by {100 * (gap - GOAL_PT):.1f} pt"


def _best_table(summary: dict[str, Any], bases: list[str]) -> list[str]:
    """bases (the first: the standard model) and their variants, each after the row it adds to."""
    names: list[str] = []

    def add(n: str) -> None:
        names.append(n)
        built_on = [m for m, s in summary.items() if (s["variant"] or {}).get("of") == n]
        for m in sorted(built_on, key=lambda m: (summary[m]["variant"]["adds"] != "ensembling", m)):
            add(m)

    for b in bases:
        add(b)
    head = ["row", "ensembling", "seeds", "best: balanced", "best: tail", "best: FLOPs saved",
            "chosen within", "chosen: balanced", "chosen: tail", "chosen: FLOPs saved",
            "goal"]  # fmt: skip
    rows = [[n, "yes" if _adds(summary, n, "ensembling") else "no",
             f"n={len(s['seeds'])}: {','.join(map(str, s['seeds']))}",
             *(pct(s["best"][k]) for k in KEYS), f"{100 * _tolerance(summary, n):g} pt",
             *(pct(s["chosen"][k]) for k in KEYS),
             "standard" if n == bases[0] else goal(s, summary[bases[0]])]
            for n, s in ((n, summary[n]) for n in names)]  # fmt: skip
    return _table(head, rows)


def _tolerance(summary: dict[str, Any], name: str) -> float:
    """The calibration tolerance of a row's chosen point: its own, else its base row's."""
    v = summary[name]["variant"] or {}
    if "tolerance" in v:
        return float(v["tolerance"])
    return _tolerance(summary, v["of"]) if "of" in v else DEFAULT_TOLERANCE


def _adds(summary: dict[str, Any], name: str, what: str) -> bool:
    v = summary[name]["variant"]
    return bool(v) and (v.get("adds") == what or _adds(summary, v["of"], what))


def best_tables(summary: dict[str, Any], orders: dict[str, str], main: Sequence[str]) -> list[str]:
    """The main table per class order: its rows of `main` (the standard model first), each
    followed by the rows built on it (retrofit, ensembling)."""
    md = ["## Standard, ELF and retrofit, with and without ensembling", "", GOAL, ""]
    for o in sorted({orders[n] for n in main if n in summary}, key=lambda o: (o != "default", o)):
        bases = [n for n in main if n in summary and orders[n] == o]
        md += [f"### {_title(o)}", "", *_best_table(summary, bases), ""]
    return md


GOAL = """Test split, thresholds from validation; mean ± sample std over the n seeds. 'Chosen' is
the cheapest validation point within the row's tolerance of the best (0.5 points unless the row
was calibrated with another `--tolerance`). Goal: at ≥ 50% FLOPs saved (at either point),
balanced and tail top-1 within 0.2 points of the standard model's mean; 'missed by X pt': the
larger of the two shortfalls beyond 0.2 points at the better point."""


def write_report(
    folder: Path,
    results_dir: Path,
    results: list[dict[str, Any]],
    order: Sequence[str],
    *,
    main: Sequence[str],
    missing: Sequence[str],
) -> Path:
    """folder/accuracy.md from the result files; `main`: the main table's rows (each class
    order's standard model first); `missing`: lines naming what is not run."""
    summary = summarize(results, order)
    orders = row_orders(results)
    training = {n: s for n, s in summary.items() if "exits" in s}
    first = next(r for r in results if "val" in r)
    keys = ("dataset", "arch", "epochs", "train_class_counts", "groups")
    meta = {k: first[k] for k in keys}
    intro = INTRO.format(tail=first["groups"]["tail"], **meta)
    hw = sorted({r["hardware_line"] for r in results if r.get("hardware_line")})
    md = [f"# Accuracy: ELF and baselines on {meta['dataset']} ({meta['arch']})", "",
          "Generated by `python -m bench accuracy report` from the result files in",
          f"`{results_dir}/` (one per row, each seed with its command and commit;",
          "`python -m bench accuracy collect` makes them). Hardware: "
          + ("; ".join(hw) if hw else "not recorded (accuracy does not depend on it)") + ".",
          "", intro, "", *best_tables(summary, orders, main), "## All training rows", "",
          *_tables_by_order(summary, orders),
          "Balanced / head / middle / tail, %:", "", *_groups_table(training), "",
          *section(),
          "## Tail-protected calibration (`elf-export calibrate --tail-tolerance X`)", "",
          "Same checkpoints, thresholds chosen on validation; 'plain' is the ≤0.5 pt point. Tail",
          "protection keeps the tail third's validation accuracy within X of its best among the",
          "points within 0.5 pt; test numbers, and the differences to plain per seed:", "",
          *_tail_table(training), "",
          "## Validation only (how variants are chosen)", "", *_val_table(training), "",
          "## Runs and commands", "",
          *(f"- `{r['row']}` seed {r['seed']}: `{r['command']}` ({r['command_source']}; "
            f"commit {r['commit'] or 'not recorded'})" for r in results), "",
          "## Not run yet", "",
          *(missing or ["Nothing: every planned row and seed is in."])]  # fmt: skip
    return pages.write("accuracy", md, folder)
