"""engine.md and its plots from bench/results/engine_{policy,exit-mix,batch}_*.json.

python -m bench.engine_report          # bench/results/engine.md, engine_exit_mix.png, ...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench import machine
from bench.http_report import mix_text

RESULTS = Path("bench/results")
MODELS = ("bundled", "heavy")


def load(what: str, model: str, root: Path) -> dict[str, Any] | None:
    path = root / f"engine_{what}_{model}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def policy_lines(r: dict[str, Any]) -> list[str]:
    lines = [
        f"### {r['model']} ({r['name']}): {r['concurrency']} concurrent submitters, "
        f"{r['requests']} requests, {r['reps']} repetitions (medians)",
        "",
        f"Command: `{r['command']}` ({r['wall_s']:.0f} s)",
        "",
        "| policy | images/s | p50 ms | p99 ms | p99 / p50 | p99/p50 per rep | images/s per rep "
        "| mean batch per stage | exit mix |",
        "|---|---:|---:|---:|---:|---|---|---|---|",
    ]
    for row in r["rows"]:
        mix = mix_text(row["exit_rates"])
        lines.append(
            f"| {row['policy']} | {row['images_per_s']:.1f} | {row['p50_ms']:.1f} "
            f"| {row['p99_ms']:.1f} | {row['p99_over_p50']:.2f} | {row['p99_over_p50_all']} "
            f"| {row['images_per_s_all']} | {row['batch_per_stage']} | {mix} |"
        )
    return [*lines, ""]


def mix_lines(r: dict[str, Any]) -> list[str]:
    full = r["full_ms"]
    lines = [
        f"### {r['model']} ({r['name']}): threshold sweep, batch 32, {r['images']} images, "
        f"{r['reps']} repetitions",
        "",
        f"Command: `{r['command']}` ({r['wall_s']:.0f} s); full.onnx {full:.3f} ms/image; "
        f"stage graphs {r['stage_ms']} ms/image",
        "",
        "| policy | threshold | exit mix | FLOPs ratio | ms/image | ideal (full x ratio) "
        "| ideal by stage times | time / stage ideal |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        mix = mix_text(row["exit_rates"])
        lines.append(
            f"| {row['policy']} | {row['threshold']} | {mix} | {row['flops_ratio']:.3f} "
            f"| {row['ms_per_image']:.3f} | {full * row['flops_ratio']:.3f} "
            f"| {row['stage_time_ideal_ms']:.3f} "
            f"| {row['ms_per_image'] / row['stage_time_ideal_ms']:.3f} |"
        )
    return [*lines, ""]


def batch_lines(r: dict[str, Any]) -> list[str]:
    lines = [
        f"### {r['model']} ({r['name']}): batch size, calibrated thresholds (FLOPs ratio "
        f"{r['flops_ratio']}), {r['images']} images, {r['reps']} repetitions",
        "",
        f"Command: `{r['command']}` ({r['wall_s']:.0f} s)",
        "",
        "| batch | variant | ms/image | images/s |",
        "|---:|---|---:|---:|",
    ]
    for row in sorted(r["rows"], key=lambda x: (x["batch"], x["variant"])):
        ms = row["ms_per_image"]
        lines.append(f"| {row['batch']} | {row['variant']} | {ms:.3f} | {1e3 / ms:.1f} |")
    return [*lines, ""]


def plot_mix(runs: list[dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False)
    for ax, r in zip(axes[0], runs, strict=True):
        for policy in sorted({row["policy"] for row in r["rows"]}):
            rows = sorted(
                (x for x in r["rows"] if x["policy"] == policy), key=lambda x: x["flops_ratio"]
            )
            ax.plot(
                [x["flops_ratio"] for x in rows],
                [1e3 / x["ms_per_image"] for x in rows],
                "o-",
                label=f"batcher ({policy})",
            )
        rows = sorted(
            (x for x in r["rows"] if x["policy"] == "deepest-first"), key=lambda x: x["flops_ratio"]
        )
        xs = [x["flops_ratio"] for x in rows]
        ax.plot(
            xs, [1e3 / (r["full_ms"] * f) for f in xs], "k--", label="ideal: full / FLOPs ratio"
        )
        ax.plot(
            xs, [1e3 / x["stage_time_ideal_ms"] for x in rows], "k:", label="ideal by stage times"
        )
        ax.axhline(1e3 / r["full_ms"], color="grey", lw=0.8, label="full.onnx")
        ax.set(
            title=f"{r['model']}: {r['name']}",
            xlabel="FLOPs ratio of the exit mix",
            ylabel="images/s",
        )
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_batch(runs: list[dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False)
    for ax, r in zip(axes[0], runs, strict=True):
        for v in sorted({row["variant"] for row in r["rows"]}):
            rows = sorted((x for x in r["rows"] if x["variant"] == v), key=lambda x: x["batch"])
            ax.plot(
                [x["batch"] for x in rows], [1e3 / x["ms_per_image"] for x in rows], "o-", label=v
            )
        full = {x["batch"]: x["ms_per_image"] for x in r["rows"] if x["variant"] == "full"}
        bs = sorted(full)
        ax.plot(
            bs,
            [1e3 / (full[b] * r["flops_ratio"]) for b in bs],
            "k--",
            label="ideal: full / FLOPs ratio",
        )
        ax.set(title=f"{r['model']}: {r['name']}", xlabel="max batch size", ylabel="images/s")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(root: Path = RESULTS) -> None:
    lines = ["# The batcher under load, exit mix and batch size (bench/engine_load.py)", ""]
    found = [load(w, m, root) for w in ("policy", "exit-mix", "batch") for m in MODELS]
    first = next((r for r in found if r is not None), None)
    if first is not None:
        lines += [machine.markdown(first["machine"]), ""]
    policy = [r for m in MODELS if (r := load("policy", m, root))]
    if policy:
        lines += [
            "## Scheduling policy (ELF_SCHEDULING), closed loop",
            "",
            *(line for r in policy for line in policy_lines(r)),
        ]
    mix = [r for m in MODELS if (r := load("exit-mix", m, root))]
    if mix:
        plot_mix(mix, root / "engine_exit_mix.png")
        lines += ["## Throughput against the exit mix", "", "![exit mix](engine_exit_mix.png)", ""]
        lines += [line for r in mix for line in mix_lines(r)]
    batch = [r for m in MODELS if (r := load("batch", m, root))]
    if batch:
        plot_batch(batch, root / "engine_batch.png")
        lines += ["## Throughput against batch size", "", "![batch size](engine_batch.png)", ""]
        lines += [line for r in batch for line in batch_lines(r)]
    (root / "engine.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
