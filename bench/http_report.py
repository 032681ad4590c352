"""serving.md and serving.png from the rows bench/http.py measured."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import machine

LABELS = {
    "elf-exits": "(a) elf-serve, exits",
    "elf-final": "(b) elf-serve, exit=final",
    "litserve": "(c) LitServe, full.onnx, batching",
    "fastapi": "(d) FastAPI def, full.onnx per request",
}
HEAVY_NOTE = (
    "The resnet50-style model (bench/heavy_model.py) has random backbone weights; only its exit "
    "classifiers are fitted (ridge regression on 512 Fashion-MNIST training images at 224 px), "
    "and its thresholds are quantiles chosen on 256 other training images for an exit mix of "
    "30/20/20/30% at exits 0..3. Deep random features are poorer than shallow ones, so on this "
    "model the early exits are MORE accurate than the final exit: its accuracy column says "
    "nothing about a trained ResNet-50 (whose early exits would cost accuracy); the compute "
    "(FLOPs per exit, run time) is that of the real network. The stand-in for the bundled "
    "model (`--stand-in`, resnet32-28px-random) is built the same way."
)

# Targets: heavy (a) >= 1.3x each of (b), (c), (d); bundled (a) >= 1.2x (d).
GOALS = {"heavy": (1.3, ("elf-final", "litserve", "fastapi")), "bundled": (1.2, ("fastapi",))}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def table(rows: Sequence[dict[str, Any]]) -> list[str]:
    out = [
        "| target | conc. | req/s | p50 ms | p99 ms | accuracy | exit mix | non-200 | "
        "server CPU ms/req | wrk cores |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (list(LABELS).index(r["target"]), r["concurrency"])):
        mix = "/".join(f"{100 * x:.0f}" for x in r["exit_rates"]) if "exit_rates" in r else "-"
        errs = r["non200"] + sum(r["socket_errors"].values())
        out.append(
            f"| {LABELS[r['target']]} | {r['concurrency']} | {r['throughput_rps']:.1f} | "
            f"{r['latency_ms']['p50']:.2f} | {r['latency_ms']['p99']:.2f} | "
            f"{_pct(r['accuracy'])} | {mix} | {errs} | {r['server_cpu_ms_per_request']:.3f} | "
            f"{r['wrk_cpu_cores']:.3f} |"
        )
    return out


def ratios(model: str, rows: Sequence[dict[str, Any]]) -> list[str]:
    """(a) over each baseline at every concurrency and at each one's best concurrency."""
    goal, against = GOALS.get(model, (1.0, ()))
    by = {(r["target"], r["concurrency"]): r["throughput_rps"] for r in rows}
    concs = sorted({r["concurrency"] for r in rows})
    present = [t for t in LABELS if t != "elf-exits" and any(k[0] == t for k in by)]
    if not any(k[0] == "elf-exits" for k in by) or not present:
        return []
    out = [
        "| (a) throughput / | " + " | ".join(f"c={c}" for c in concs) + " | best vs best |",
        "|---|" + "---:|" * (len(concs) + 1),
    ]
    best_a = max(v for k, v in by.items() if k[0] == "elf-exits")
    for t in present:
        cells = [
            f"{by[('elf-exits', c)] / by[(t, c)]:.2f}x"
            if by.get((t, c)) and ("elf-exits", c) in by
            else "-"
            for c in concs
        ]
        best = best_a / max(1e-9, *(v for k, v in by.items() if k[0] == t))
        mark = f" (goal {goal}x: {'met' if best >= goal else 'NOT met'})" if t in against else ""
        out.append(f"| {LABELS[t]} | " + " | ".join(cells) + f" | {best:.2f}x{mark} |")
    return out


def model_section(key: str, info: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[str]:
    chosen = info.get("calibration_chosen") or {}
    lines = [
        f"## {key}: {info['name']} ({info['architecture']}, input {info['input']})",
        "",
        f"- Model dir `{info['dir']}`, method: {info['method']}; FLOPs full "
        f"{info['flops_full']:,}; thresholds {[round(t, 4) for t in info['thresholds']]}; "
        f"cumulative FLOPs ratio per exit {info['cumulative_flops_ratio']}",
        f"- Manifest's exit mix at these thresholds: {chosen.get('exit_rates')}, expected FLOPs "
        f"ratio {chosen.get('flops_ratio')}",
        f"- {info['images']} images from `{info['image_dir']}`, {info['duration_s']:g} s per point",
        "",
        *table(rows),
        "",
        *ratios(key, rows),
        "",
    ]
    return lines


def write_report(result: dict[str, Any], out: Path) -> None:
    rows = result["rows"]
    lines = [
        "# Serving benchmark (bench/http.py)",
        "",
        f"Command: `{result['command']}` ({result['wall_s']:.0f} s wall)"
        + (" -- QUICK SMOKE TEST, not a result" if result["settings"].get("quick") else ""),
        "",
        machine.markdown(result["machine"]),
        f"- Load average at end: {result['machine'].get('load_average_end_1_5_15')}",
        "",
        "Method: wrk (C, its own process; `wrk cores` = its CPU use) with "
        "`bench/wrk/post_images.lua`, closed loop, one connection per wrk thread, real "
        "Fashion-MNIST test images in turn; every answer's `class_index` checked against the "
        "image's label (accuracy). Each server alone: started, ready, warmed with load, "
        "measured, stopped; one uvicorn worker each (LitServe: one API server process + one "
        "inference worker process). (a) and (b) are one elf-serve process, measured "
        "interleaved. Bodies: raw `image/*` for (a), (b), (d); multipart for (c) (LitServe "
        "parses JSON or forms only). ONNX Runtime: elf-serve with its settings (intra-op threads "
        "= CPUs, no spinning); the baselines with ORT's default session options. "
        "`server CPU ms/req` = CPU time of the server's whole process group / requests.",
        "",
        HEAVY_NOTE,
        "",
    ]
    for key, info in result["models"].items():
        lines += model_section(key, info, [r for r in rows if r["model"] == key])
    (out / "serving.md").write_text("\n".join(lines), encoding="utf-8")
    plot(result, out / "serving.png")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    models = list(result["models"])
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4 * len(models)), squeeze=False)
    for i, key in enumerate(models):
        rows = [r for r in result["rows"] if r["model"] == key]
        for target, label in LABELS.items():
            pts = sorted((r["concurrency"], r) for r in rows if r["target"] == target)
            if not pts:
                continue
            cs = [c for c, _ in pts]
            axes[i][0].plot(cs, [r["throughput_rps"] for _, r in pts], marker="o", label=label)
            axes[i][1].plot(cs, [r["latency_ms"]["p99"] for _, r in pts], marker="o", label=label)
        name = result["models"][key]["name"]
        for ax, ylabel in zip(axes[i], ("requests/s", "p99 latency (ms)"), strict=True):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency (closed loop)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{key}: {name}")
            ax.grid(alpha=0.3)
        axes[i][1].set_yscale("log")
        axes[i][0].legend(fontsize=8)
    fig.suptitle(f"{result['machine']['nproc']} CPUs, {result['machine']['cpu_model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
