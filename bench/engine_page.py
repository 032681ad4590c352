"""docs/benchmarks/engine.md from the engine benchmark's JSON (bench/engine.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench import pages

INTRO = (
    "The early-exit engine in process against `full.onnx`, on the same decoded images with the "
    "server's ONNX Runtime session options. Variants run interleaved in every repetition: "
    "`full` = full.onnx per batch; `stages` = the stage graphs chained by the server's runner "
    "without exits; `early-exit` = the runner dropping exited rows after each stage (per "
    "batch); `batcher` = the server's Batcher (max_batch_size = batch, 2 ms delay, "
    "deepest-first scheduling) fed every image at once; `batcher-age` = the same with age-aware "
    "scheduling (the server's default); `batcher-fresh` = `batcher` writing every merged batch "
    "of survivors into fresh memory (the other variants reuse the runner's merge buffers). "
    "`ideal` = full x the FLOPs ratio of the exit mix; "
    "`ideal by stage times` = the exit mix at each stage graph's measured time (a zero-overhead "
    "engine on these graphs); `saving share` = (1 - time/full) / (1 - FLOPs ratio)."
)
PARTS = {
    "ideal": "ideal by stage times (batch-b time per row)",
    "partial_batches": "partial batches",
    "slower_in_burst": "stage calls slower in the burst than alone",
    "merges": "merges of survivors",
    "upload": "upload of stage-0 input",
    "gaps_between_calls": "gaps between calls (exits, bookkeeping, answers, scheduling)",
    "before_first_call": "before the first call",
    "after_last_call": "after the last call",
}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def model_lines(m: dict[str, Any]) -> list[str]:
    rows = [
        [str(r["batch"]), r["variant"], str(r["reps"]),
         f"{r['ms_per_image_min']:.3f} / **{r['ms_per_image']:.3f}** / {r['ms_per_image_max']:.3f}",
         _pct(r.get("median_precision")), f"{r['time_vs_full']:.3f}",
         _pct(r.get("time_vs_full_precision")), f"{r['flops_ratio']:.3f}",
         f"{r['vs_stage_time_ideal']:.3f}x", _pct(r["saving_efficiency"]),
         "/".join(f"{100 * x:.0f}" for x in r["exit_rates"]), f"{100 * r['accuracy']:.1f}%"]
        for r in m["rows"]
    ]  # fmt: skip
    head = ["batch", "variant", "reps", "ms/image min / median / max", "median within",
            "time / full", "within", "FLOPs ratio", "vs ideal by stage times", "saving share",
            "exit mix %", "accuracy"]  # fmt: skip
    stage_ms = "; ".join(f"b={b}: {v}" for b, v in m["stage_ms_per_image"].items())
    lines = [
        f"### {m['model']}: {m['name']} ({m['architecture']}, input {m['input']})",
        "",
        f"{m['images']} images; thresholds {m['thresholds']}; cumulative FLOPs ratio per exit "
        f"{m['cumulative_flops_ratio']}"
        + (f"; stage graphs' ms/image by batch size: {stage_ms}." if stage_ms else "."),
        "",
        *pages.table(head, rows, "rlrrrrrrrrlr"),
        "",
    ]
    return lines + (trace_lines(m["trace"]) if "trace" in m else [])


def trace_lines(t: dict[str, Any]) -> list[str]:
    b, pol = t["batch"], t["policies"]
    lines = [f"Per-stage trace of {t['bursts']} bursts per batcher variant at batch {b} (medians, "
             "ms per image; the share of the time above ideal in brackets):", ""]  # fmt: skip
    rows = []
    for key, label in PARTS.items():
        cells = []
        for p in pol.values():
            ms = p["ms_per_image"]
            excess = ms["burst"] - ms["ideal"]
            share = "" if key == "ideal" or excess <= 0 else f" ({100 * ms[key] / excess:.0f}%)"
            cells.append(f"{ms[key]:.3f}{share}")
        rows.append([label, *cells])
    rows.append(["**burst**", *(f"**{p['ms_per_image']['burst']:.3f}**" for p in pol.values())])
    lines += [*pages.table(["part", *pol], rows, "l" + "r" * len(pol)), ""]
    for name, p in pol.items():
        srows = [[str(s["stage"]), str(s["calls"]),
                  f"{s['rows_mean']} ({s['rows_min']}-{s['rows_max']})",
                  f"{s['ms_per_call']:.2f}", f"{s['batch_b_ms_per_call']:.2f}",
                  f"{s['vs_batch_b_per_row']:.3f}"] for s in p["stages"]]  # fmt: skip
        g = p["gaps_ms"]
        lines += [f"`{name}`: gaps between calls: {g['count']}, median {g['median']:.3f} ms, "
                  f"max {g['max']:.3f} ms.", "",
                  *pages.table(["stage", "calls", "rows per call (min-max)", "ms per call",
                                f"ms per call alone at {b}", f"time per row vs batch {b}"],
                               srows, "rrrrrr"), ""]  # fmt: skip
    return lines


def agreement_lines(a: dict[str, Any]) -> list[str]:
    verdict = "agree" if a["agree"] else "do NOT agree"
    rows = [[r["model"], str(r["batch"]), r["variant"], _pct1(r["spread_ms_per_image"]),
             _pct1(r.get("spread_time_vs_full")), _pct1(r["spread_vs_stage_time_ideal"])]
            for r in a["rows"]]  # fmt: skip
    return [
        "## Two runs back to back",
        "",
        f"The same command ran twice, each in a fresh process; the ratios the benchmark claims "
        f"(time / full, paired within each repetition, and vs ideal by stage times) "
        f"**{verdict}** within {100 * a['limit']:.0f}% (largest spread "
        f"{100 * a['max_spread']:.1f}%). The absolute ms per image follows the machine's speed, "
        "which drifts between runs; its spread is shown, not judged.",
        "",
        *pages.table(
            [
                "model",
                "batch",
                "variant",
                "spread of median ms/image",
                "spread of time / full",
                "spread of ratio to ideal by stage times",
            ],
            rows,
            "lrlrrr",
        ),
        "",
    ]


def _pct1(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def write_page(result: dict[str, Any], source: Path, folder: Path = pages.PAGES) -> Path:
    lines = [*pages.header("Engine in process", result, source), INTRO, ""]
    if result.get("quick"):
        lines += ["**A quick smoke test, not a measurement.**", ""]
    if "agreement" in result:
        lines += agreement_lines(result["agreement"])
    for i, run in enumerate(result.get("runs", [result]), 1):
        if "runs" in result:
            lines += [f"## Run {i}", ""]
        for m in run["models"]:
            lines += model_lines(m)
    return pages.write("engine", lines, folder)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench engine report", description=__doc__)
    p.add_argument("--result", type=Path, default=Path("bench/results/engine.json"))
    p.add_argument("--pages", type=Path, default=pages.PAGES)
    a = p.parse_args(argv)
    write_page(pages.load(a.result), a.result, a.pages)
    return 0
