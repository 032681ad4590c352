"""engine_tail.md from bench/results/engine_tail*.json (written by bench.engine_tail).

    python -m bench.engine_tail_report bench/results/engine_tail_run1_heavy.json ... \
        --out bench/results/engine_tail.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def summary_lines(r: dict[str, Any]) -> list[str]:
    lines = [
        f"Command: `{r['command']}` ({r['wall_s']:.0f} s); {r['concurrency']} submitters, "
        f"{r['requests']} requests per variant and repetition (the first "
        f"{2 * r['concurrency']} answers of each are warm-up), {r['reps']} repetitions "
        "interleaved; medians.",
        "",
        "| variant | images/s | p50 ms | p99 ms | p99 / p50 | p99/p50 per rep | images/s per rep "
        "| mean batch per stage | stage-0 ms/image p50 per rep |",
        "|---|---:|---:|---:|---:|---|---|---|---|",
    ]
    for row in r["rows"]:
        noise = [rep[0][1] for rep in row.get("stage_ms_per_image", [])] or "not recorded"
        caps = row.get("batch_cap_all", [])
        auto = f" (cap per rep {caps})" if "bauto" in row["variant"] else ""
        lines.append(
            f"| {row['variant']}{auto} | {row['images_per_s']:.1f} | {row['p50_ms']:.0f} "
            f"| {row['p99_ms']:.0f} | **{row['p99_over_p50']:.2f}** | {row['p99_over_p50_all']} "
            f"| {row['images_per_s_all']} | {row['batch_per_stage']} | {noise} |"
        )
    for row in r["rows"]:
        for i, ms in enumerate(row.get("cap_ms_per_image_all", [])):
            if ms:
                timed = ", ".join(f"b{b} {t}" for b, t in ms.items())
                lines.append(f"- {row['variant']} rep {i + 1}: batcher burst ms/image {timed}")
    return [*lines, ""]


def _parts(d: dict[str, Any]) -> str:
    wait, comp = d["wait"], d["compute"]
    exit_ = d.get("exit", "")
    prev = d.get("prev_exit", "")
    who = f"{d['n']} req." if "n" in d else f"exit {exit_}, prev. {prev}"
    return (
        f"{who} | {d['latency']:.0f} | {wait[0]:.0f} | {sum(wait[1:]):.0f} "
        f"| {' / '.join(f'{c:.0f}' for c in comp)} | {d['answer']:.1f}"
    )


def decomposition_lines(r: dict[str, Any]) -> list[str]:
    lines = [
        "Per request (pooled over the repetitions): wait 0 = submission to its stage-0 batch's "
        "start; waits k>=1 = between its stage runs; compute = its batches' input stacking/"
        "merging and stage graph run per stage; answer = end of its last run to the submitter "
        "seeing the answer. Milliseconds.",
        "",
        "| variant | request | which | latency | wait 0 | waits k>=1 | compute per stage "
        "| answer |",
        "|---|---|---|---:|---:|---:|---|---:|",
    ]
    for row in r["rows"]:
        d = row["decomposition"]
        for label, key in (
            ("p50", "p50_request"),
            ("p99", "p99_request"),
            ("middle 10% (mean)", "middle_10pct"),
            ("slowest 2% (mean)", "slowest_2pct"),
        ):
            lines.append(f"| {row['variant']} | {label} | {_parts(d[key])} |")
    return [*lines, ""]


def prev_exit_lines(r: dict[str, Any]) -> list[str]:
    k = len(r["rows"][0]["batch_per_stage"])
    lines = [
        "Median latency (ms) by the client's previous exit (row) and this request's exit "
        "(column); a spread across the table is the round a closed-loop client missed.",
        "",
    ]
    for row in r["rows"]:
        by = row["decomposition"]["by_prev_exit"]
        lines += [
            f"{row['variant']}:",
            "",
            "| previous \\ this | " + " | ".join(f"exit {j}" for j in range(k)) + " |",
            "|---|" + "---:|" * k,
        ]
        for i in range(k):
            cells = [
                f"{by[f'{i}->{j}']['median_ms']:.0f} ({by[f'{i}->{j}']['n']})"
                if f"{i}->{j}" in by
                else "-"
                for j in range(k)
            ]
            lines.append(f"| exit {i} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def report(paths: list[Path]) -> str:
    out = ["# The batcher's latency tail under a closed loop (bench/engine_tail.py)", ""]
    for path in paths:
        r = json.loads(path.read_text(encoding="utf-8"))
        m = r["machine"]
        out += [
            f"## {path.name}: {r['model']} ({r['name']})",
            "",
            f"Machine: {m['nproc']} CPUs ({m['cpu_model']}); load average at start "
            f"{m['load_average_1_5_15']}; server code at git {m['git_commit']}; {m['date']}",
            "",
            *summary_lines(r),
            *decomposition_lines(r),
            *prev_exit_lines(r),
        ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=Path("bench/results/engine_tail.md"))
    args = p.parse_args(argv)
    args.out.write_text(report(args.json), encoding="utf-8")


if __name__ == "__main__":
    main()
