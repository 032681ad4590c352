"""runner.md from the measurements of bench/runner.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import machine
from bench.http_report import HEAVY_NOTE, mix_text

GOAL_BATCH = 32
GOAL = 0.9  # realised saving >= 90% of the FLOPs saving at batch 32


def _eff(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def model_lines(m: dict[str, Any]) -> list[str]:
    lines = [
        f"## {m['model']}: {m['name']} ({m['architecture']}, input {m['input']})",
        "",
        f"- `{m['model_dir']}`; FLOPs full {m['flops_full']:,}; thresholds {m['thresholds']}; "
        f"cumulative FLOPs ratio per exit {m['cumulative_flops_ratio']}; manifest's expected "
        f"FLOPs ratio {m['manifest_flops_ratio']}",
        f"- {m['images']} images, {m['reps']} repetitions (medians)",
        f"- Share of each stage graph in FLOPs: {m['stage_flops_share']}; in run time (`stages`, "
        "per batch size): " + "; ".join(f"b={b}: {v}" for b, v in m["stage_time_share"].items()),
        "",
        "| batch | variant | ms/image | images/s | time / full | FLOPs ratio | ideal ms/image | "
        "ideal by stage times | saving / FLOPs saving | exit mix | accuracy |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in m["rows"]:
        mix = mix_text(r["exit_rates"])
        lines.append(
            f"| {r['batch']} | {r['variant']} | {r['ms_per_image']:.3f} | {r['images_per_s']:.1f} "
            f"| {r['time_vs_full']:.3f} | {r['flops_ratio']:.3f} | {r['ideal_ms_per_image']:.3f} "
            f"| {r['stage_time_ideal_ms_per_image']:.3f} | {_eff(r['saving_efficiency'])} | {mix} "
            f"| {100 * r['accuracy']:.1f}% |"
        )
    goal = [r for r in m["rows"] if r["batch"] == GOAL_BATCH and r["variant"] != "full"]
    verdicts = [
        f"{r['variant']} {_eff(r['saving_efficiency'])} "
        f"({r['ms_per_image'] / r['stage_time_ideal_ms_per_image']:.3f}x ideal by stage times)"
        for r in goal
        if r["variant"] in ("early-exit", "batcher", "batcher-age")
    ]
    if verdicts:
        met = any(
            (r["saving_efficiency"] or 0) >= GOAL
            and r["ms_per_image"] <= 1.05 * r["stage_time_ideal_ms_per_image"]
            for r in goal
            if r["variant"].startswith("batcher")
        )
        lines += [
            "",
            f"Goal at batch {GOAL_BATCH} (realised saving >= {100 * GOAL:.0f}% of the FLOPs "
            f"saving, and time within 1.05x ideal by stage times; server engine = batcher): "
            f"{', '.join(verdicts)} -> "
            f"{'met' if met else 'NOT met'}.",
        ]
    return [*lines, ""]


def write_runner_report(result: dict[str, Any], path: Path) -> None:
    lines = [
        "# Early-exit engine vs full.onnx, in process (bench/runner.py)",
        "",
        f"Command: `{result['command']}` ({result['wall_s']:.0f} s wall)"
        + (" -- QUICK SMOKE TEST, not a result" if result.get("quick") else ""),
        "",
        machine.markdown(result["machine"]),
        f"- Load average at end: {result['machine'].get('load_average_end_1_5_15')}",
        "",
        "Variants (same images, same ONNX Runtime session options, interleaved in every "
        "repetition): `full` = full.onnx per batch; `stages` = the stage graphs chained by the "
        "server's OnnxStageRunner without exits; `early-exit` = the runner dropping exited rows "
        "after each stage (per batch); `batcher` = the server's Batcher (max_batch_size = batch, "
        "2 ms delay, ELF_SCHEDULING=deepest-first) fed every image at once, merging survivors "
        "across batches; `batcher-age` = the same with ELF_SCHEDULING=age-aware. `ideal` = full "
        "x FLOPs ratio of the exit mix measured here; `ideal by stage times` = what the exit mix "
        "costs with each stage graph at its measured time in `stages` (a zero-overhead engine: "
        "the gap to `ideal` is the stages' time not being proportional to their FLOPs, the gap "
        "from it is the engine's overhead); `saving / FLOPs saving` = (1 - time/full) / "
        "(1 - FLOPs ratio).",
        "",
        HEAVY_NOTE,
        "",
    ]
    for m in result["models"]:
        lines += model_lines(m)
    path.write_text("\n".join(lines), encoding="utf-8")
