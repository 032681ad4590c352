"""bench/results/adaptive.json (bench.adaptive, one entry per model) -> adaptive.md's tables.

    python -m bench.adaptive_report

The tables and the goal check are generated; the discussion below them is written by hand in
bench/results/adaptive_notes.md and appended.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.machine import markdown

RESULTS = Path(__file__).parent / "results"


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _point(m: dict[str, float]) -> str:
    def get(prefix: str) -> float | None:
        return next((v for k, v in m.items() if k.startswith(prefix)), None)

    acc = get("elf_operating_point_accuracy")
    if acc is None:
        return "- (off)"
    flops = get("elf_operating_point_flops_ratio")
    floor = " floor" if get("elf_operating_point_at_floor") == 1.0 else ""
    limit = get("elf_operating_point_admission_limit") or 0
    shed = f", limit {limit:.0f}" if limit else ""
    return f"{acc:.4f} / {_f(flops, '.3f')}{floor}{shed}"


def feasibility(r: dict[str, Any]) -> list[str]:
    cap, cal, flo = r["capacity"], r["calibrated_point"], r["floor_point"]
    need = 2 * cap["full_depth"]
    return [
        "| operating point | val accuracy | FLOPs ratio | capacity, images/s (closed loop) "
        "| x full depth |",
        "|---|---:|---:|---:|---:|",
        f"| full depth (exit=final) | - | 1.000 | {cap['full_depth']:.1f} | 1.00 |",
        f"| calibrated (default) | {cal['accuracy']:.4f} | {cal['flops_ratio']:.3f} "
        f"| {cap['calibrated']:.1f} | {cap['calibrated'] / cap['full_depth']:.2f} |",
        f"| floor (menu point {flo['menu_points']}) | {flo['accuracy']:.4f} "
        f"| {flo['flops_ratio']:.3f} | {cap['floor']:.1f} "
        f"| {cap['floor'] / cap['full_depth']:.2f} |",
        "",
        f"2x the full-depth capacity is {need:.1f} images/s; the floor serves "
        f"{cap['floor']:.1f} ({cap['floor'] / need:.0%} of it): "
        + (
            "the goal is within reach of the floor point."
            if cap["floor"] >= need
            else f"at 2x at least {1 - cap['floor'] / need:.0%} of the requests cannot be served "
            "within any latency target."
        ),
    ]


def steps(r: dict[str, Any]) -> list[str]:
    rows = [
        "| controller | step (arrival/s) | sent | sent/s kept | goodput/s | p50 ms | p99 ms "
        "| p99 after 5 s "
        "| 503 shed | 503 full | 504 | served acc | point at end: val acc / FLOPs | server CPU/s "
        "| client CPU/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for mode, run in r["runs"].items():
        for s in run:
            rows.append(
                f"| {mode} | {s['factor']:g}x ({s['rate']:.1f}) | {s['sent']} "
                f"| {s['send_rate']:.1f} | {s['goodput']:.1f} | {_f(s['p50_ms'], '.0f')} "
                f"| {_f(s['p99_ms'], '.0f')} | {_f(s['p99_settled_ms'], '.0f')} "
                f"| {s['rate_503_shed']:.3f} "
                f"| {s['rate_503_other']:.3f} | {s['rate_504']:.3f} "
                f"| {_f(s['served_accuracy'], '.2%')} | {_point(s['metrics'])} "
                f"| {s['server_cpu_s'] / r['step_s']:.2f} | {s['client_cpu_s'] / r['step_s']:.2f} |"
            )
    return rows


def goal(r: dict[str, Any]) -> list[str]:
    """The issue's goal at the 2x step with the controller on, and what off did."""
    out = []
    for mode, run in r["runs"].items():
        worst = max((s for s in run if s["factor"] >= 2), key=lambda s: s["factor"])
        rejected = worst["rate_503_shed"] + worst["rate_503_other"] + worst["rate_504"]
        p99, settled = worst["p99_ms"], worst["p99_settled_ms"]
        targets = [float(mode.split()[1])] if mode.startswith("on") else _targets(r)
        vs = ", ".join(f"{p99 / t:.1f}x {t:g} ms" for t in targets) if p99 else "-"
        out.append(
            f"- controller {mode}, {worst['factor']:g}x: p99 {_f(p99, '.0f')} ms ({vs}; after "
            f"the step's first 5 s {_f(settled, '.0f')} ms), {rejected:.1%} rejected (503/504), "
            f"goodput {worst['goodput']:.1f}/s, served accuracy "
            f"{_f(worst['served_accuracy'], '.2%')} (floor on validation "
            f"{r['floor_point']['accuracy']:.2%})."
        )
    return out


def _targets(r: dict[str, Any]) -> list[float]:
    t = r["target_ms"]
    return [float(x) for x in t] if isinstance(t, list) else [float(t)]


def model_section(name: str, r: dict[str, Any]) -> list[str]:
    return [
        f"## {name}: `{Path(r['model_dir']).name}`",
        "",
        f"Command: `{r['command']}` (under `/work/runs/bench_lock.sh`). "
        f"Targets `ELF_LATENCY_TARGET_MS` {', '.join(f'{t:g}' for t in _targets(r))} ms "
        f"(one controller-on run each), {r['step_s']:g} s per step.",
        "",
        markdown(r["machine"]),
        "",
        "### Capacity per operating point, side by side in one server",
        "",
        *feasibility(r),
        "",
        "### Open loop 0.5x -> 2x -> 0.5x of the full-depth capacity",
        "",
        *steps(r),
        "",
        "### The goal at 2x",
        "",
        *goal(r),
        "",
    ]


def main() -> None:
    data = json.loads((RESULTS / "adaptive.json").read_text())
    lines = ["# Load-adaptive operating point: open loop, controller off / on", ""]
    for name in ("bundled", "heavy"):
        if name in data:
            lines += model_section(name, data[name])
    notes = RESULTS / "adaptive_notes.md"
    if notes.is_file():
        lines += [notes.read_text().rstrip(), ""]
    (RESULTS / "adaptive.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
