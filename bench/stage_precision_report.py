"""bench/results/stage_precision.{json,md}: one entry per model (each run of
bench.stage_precision replaces its models' entries), rendered as tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import machine

FASTER = 0.10  # "clearly faster": at least 10% less time at the exit mix
MAX_COST_PT = 0.5  # at most 0.5 points of balanced accuracy lost


def merge_result(path: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """The results file with `entry` in place of the same model's earlier entry."""
    models: list[dict[str, Any]] = []
    if path.is_file():
        models = json.loads(path.read_text(encoding="utf-8"))["models"]
    models = [m for m in models if m["model"] != entry["model"]] + [entry]
    order = {"bundled": 0, "heavy": 1}
    return {"models": sorted(models, key=lambda m: order.get(m["model"], 2))}


def mix_cost(stage_ms: Sequence[float], exit_rates: Sequence[float]) -> float:
    """ms per image of an exit mix when stage k costs stage_ms[k] per row: a row leaving at
    exit k ran stages 0..k (a zero-overhead engine)."""
    total, cum = 0.0, 0.0
    for ms, rate in zip(stage_ms, exit_rates, strict=True):
        cum += ms
        total += rate * cum
    return total


def verdicts(m: dict[str, Any]) -> dict[str, dict[str, float | bool]]:
    """Per variant: time at its own exit mix and in total against fp32, balanced accuracy lost
    (points), and whether it passes (>= 10% faster at the exit mix, <= 0.5 pt lost)."""
    ref = m["variants"]["fp32"]
    ref_mix = mix_cost(ref["stage_ms_per_image"], ref["exit_rates"])
    ref_sum = sum(ref["stage_ms_per_image"])
    out: dict[str, dict[str, float | bool]] = {}
    for v, r in m["variants"].items():
        t_mix = mix_cost(r["stage_ms_per_image"], r["exit_rates"]) / ref_mix
        cost = 100 * (ref["balanced_accuracy"] - r["balanced_accuracy"])
        out[v] = {
            "sum_vs_fp32": sum(r["stage_ms_per_image"]) / ref_sum,
            "mix_ms_per_image": mix_cost(r["stage_ms_per_image"], r["exit_rates"]),
            "mix_vs_fp32": t_mix,
            "cost_pt": cost,
            "passes": v != "fp32" and t_mix <= 1 - FASTER and cost <= MAX_COST_PT,
        }
    return out


def model_section(m: dict[str, Any]) -> list[str]:
    k = len(m["thresholds"])
    ver = verdicts(m)
    ref = m["variants"]["fp32"]["stage_ms_per_image"]
    lines = [
        f"## {m['model']}: {m['name']} (`{m['model_dir']}`)",
        "",
        f"Command: `{m['command']}`",
        "",
        machine.markdown(m["machine"]),
        "",
        f"- Evaluation: {m['evaluation']}; thresholds {m['thresholds']} (the manifest's).",
        f"- Quantisation calibration: {m['calibration']}.",
        f"- Timing: batch {m['batch']}, {m['reps']} repetitions of {m['calls']} calls per stage, "
        "variants interleaved, medians; the server's session options.",
    ]
    lines += [f"- **{v} not measured**: {why}" for v, why in m["failed"].items()]
    stages = " | ".join(f"stage {i}" for i in range(k))
    lines += [
        "",
        f"| variant | {stages} | stages sum | vs fp32 | at its exit mix | vs fp32 | balanced "
        "acc | cost (pt) | final exit alone | exit mix | same answer | same exit |",
        "|---|" + "---:|" * (k + 9) + "---:|",
    ]
    for v, r in m["variants"].items():
        e = ver[v]
        cells = [
            f"{t:.4f} ({t / t0:.2f}x)" for t, t0 in zip(r["stage_ms_per_image"], ref, strict=True)
        ]
        mix = "/".join(f"{100 * x:.1f}" for x in r["exit_rates"])
        lines.append(
            f"| {v} | " + " | ".join(cells) + f" | {sum(r['stage_ms_per_image']):.4f} | "
            f"{e['sum_vs_fp32']:.3f} | {e['mix_ms_per_image']:.4f} | {e['mix_vs_fp32']:.3f} | "
            f"{100 * r['balanced_accuracy']:.2f}% | {e['cost_pt']:+.2f} | "
            f"{100 * r['final_exit_balanced_accuracy']:.2f}% | {mix} | "
            f"{100 * r['answer_agreement']:.1f}% | {100 * r['exit_agreement']:.1f}% |"
        )
    passing = [v for v, e in ver.items() if e["passes"]]
    lines += [
        "",
        f"Clearly faster (>= {FASTER:.0%} less time at its exit mix) with <= {MAX_COST_PT} pt "
        f"balanced accuracy lost: {', '.join(passing) if passing else 'none'}.",
        "",
    ]
    return lines


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# fp16 / int8 stage graphs against fp32 (bench/stage_precision.py)",
        "",
        "ms per image per stage at batch 32 (ratio to fp32); `at its exit mix` = what the "
        "variant's own exit mix costs with each stage at its measured time (a zero-overhead "
        "engine); accuracy at the manifest's thresholds; `same answer` / `same exit` = rows "
        "where the variant's answer / exit taken equals fp32's.",
        "",
    ]
    for m in result["models"]:
        lines += model_section(m)
    return "\n".join(lines)
