"""docs/benchmarks/http.md and its plots from the results of bench/http.py."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import pages

LABELS = {
    "elf-exits": "(a) elf-serve, exits",
    "elf-final": "(b) elf-serve, exit=final",
    "elf-exits-2w": "(a2) elf-serve, exits, --workers 2",
    "elf-exits-granian": "(g) elf-serve, exits, --http-server granian",
    "elf-exits-granian-2w": "(g2) elf-serve, exits, granian, --workers 2",
    "litserve": "(c) LitServe, full.onnx, batching",
    "fastapi": "(d) FastAPI def, full.onnx per request",
    "kserve": "(e) KServe 0.21 model server, full.onnx, batching",
    "ray": "(f) Ray Serve 2.60, full.onnx, @serve.batch",
}
PEERS = ("litserve", "fastapi", "kserve", "ray")
# elf-serve's variants that each get the targets' tables (ratios, p99, in-process share).
OURS = ("elf-exits", "elf-exits-granian", "elf-exits-2w", "elf-exits-granian-2w")
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


def mix_text(rates: list[float]) -> str:
    """An exit mix as percentages, e.g. 50/30/20."""
    return "/".join(f"{100 * x:.0f}" for x in rates)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def table(rows: Sequence[dict[str, Any]]) -> list[str]:
    out = [
        "| target | conc. | req/s | p50 ms | p99 ms | accuracy | exit mix | non-200 | "
        "server CPU ms/req | wrk cores | batches: mean / max |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: (list(LABELS).index(r["target"]), r["concurrency"])):
        mix = mix_text(r["exit_rates"]) if "exit_rates" in r else "-"
        errs = r["non200"] + sum(r["socket_errors"].values())
        out.append(
            f"| {LABELS[r['target']]} | {r['concurrency']} | {r['throughput_rps']:.1f} | "
            f"{r['latency_ms']['p50']:.2f} | {r['latency_ms']['p99']:.2f} | "
            f"{_pct(r['accuracy'])} | {mix} | {errs} | {r['server_cpu_ms_per_request']:.3f} | "
            f"{r['wrk_cpu_cores']:.3f} | {_batches(r)} |"
        )
    return out


def _batches(r: dict[str, Any]) -> str:
    b = r.get("batches")
    if b is None:
        return "-"
    flag = "" if b["batching"] else " **NOT batching**"
    return f"{b['mean']:.1f} / {b['max']}{flag}"


def _tag(ours: str) -> str:
    """ "(a)" of "(a) elf-serve, exits"."""
    return LABELS[ours].split(" ", 1)[0]


def p99_check(rows: Sequence[dict[str, Any]], ours: str = "elf-exits") -> list[str]:
    """(a)'s p99 against each peer's at the same concurrency (the target: no worse)."""
    p99 = {(r["target"], r["concurrency"]): r["latency_ms"]["p99"] for r in rows}
    concs = sorted({c for t, c in p99 if t == ours})
    peers = [t for t in PEERS if any(k[0] == t for k in p99)]
    if not concs or not peers:
        return []
    out = [
        f"| {_tag(ours)} p99 / peer p99 | " + " | ".join(f"c={c}" for c in concs) + " |",
        "|---|" + "---:|" * len(concs),
    ]
    for t in peers:
        cells = []
        for c in concs:
            if (t, c) not in p99:
                cells.append("-")
                continue
            ratio = p99[(ours, c)] / p99[(t, c)]
            cells.append(f"{ratio:.2f}" + ("" if ratio <= 1 else " (worse)"))
        out.append(f"| {LABELS[t]} | " + " | ".join(cells) + " |")
    return out


def limit_line(
    key: str, rows: Sequence[dict[str, Any]], limit: dict[str, Any] | None, ours: str = "elf-exits"
) -> str:
    """(a)'s best req/s against the in-process limit: full.onnx's batch-32 images/s divided by
    the FLOPs ratio of the exit mix (a) served."""
    mine = [r for r in rows if r["target"] == ours and "flops_saved" in r]
    if not limit or not mine:
        return ""
    best = max(mine, key=lambda r: r["throughput_rps"])
    ratio = 1 - best["flops_saved"]
    bound = limit["full_images_per_s"] / ratio
    share = best["throughput_rps"] / bound
    return (
        f"- In-process limit: full.onnx at batch {limit['batch']} ran "
        f"{limit['full_images_per_s']:.1f} images/s in this run; divided by the exit mix's "
        f"FLOPs ratio {ratio:.3f}: {bound:.1f} images/s. {_tag(ours)}'s best, "
        f"{best['throughput_rps']:.1f} "
        f"req/s at c={best['concurrency']}, is **{share:.0%}** of it."
    )


def ratios(model: str, rows: Sequence[dict[str, Any]], ours: str = "elf-exits") -> list[str]:
    """(a) over each baseline at every concurrency and at each one's best concurrency."""
    by = {(r["target"], r["concurrency"]): r["throughput_rps"] for r in rows}
    concs = sorted({r["concurrency"] for r in rows})
    present = [t for t in LABELS if t != ours and any(k[0] == t for k in by)]
    if not any(k[0] == ours for k in by) or not present:
        return []
    out = [
        f"| {_tag(ours)} throughput / | "
        + " | ".join(f"c={c}" for c in concs)
        + " | best vs best |",
        "|---|" + "---:|" * (len(concs) + 1),
    ]
    best_a = max(v for k, v in by.items() if k[0] == ours)
    for t in present:
        cells = [
            f"{by[(ours, c)] / by[(t, c)]:.2f}x" if by.get((t, c)) and (ours, c) in by else "-"
            for c in concs
        ]
        best = best_a / max(1e-9, *(v for k, v in by.items() if k[0] == t))
        out.append(f"| {LABELS[t]} | " + " | ".join(cells) + f" | {best:.2f}x |")
    return out


def model_section(
    key: str, info: dict[str, Any], rows: Sequence[dict[str, Any]], limit: dict[str, Any] | None
) -> list[str]:
    chosen = info.get("calibration_chosen") or {}
    lines = [
        f"## {key}: {info['name']} ({info['architecture']}, input {info['input']})",
        "",
        f"- Method: {info['method']}; FLOPs full "
        f"{info['flops_full']:,}; thresholds {[round(t, 4) for t in info['thresholds']]}; "
        f"cumulative FLOPs ratio per exit {info['cumulative_flops_ratio']}",
        f"- Manifest's exit mix at these thresholds: {chosen.get('exit_rates')}, expected FLOPs "
        f"ratio {chosen.get('flops_ratio')}",
        f"- {info['images']} images, {info['duration_s']:g} s per point",
        "",
        *table(rows),
        "",
    ]
    for ours in (t for t in OURS if any(r["target"] == t for r in rows)):
        lines += [
            *ratios(key, rows, ours),
            "",
            *p99_check(rows, ours),
            "",
            limit_line(key, rows, limit, ours),
            "",
        ]
    return lines


METHOD = (
    "Method: wrk (C, its own process; `wrk cores` = its CPU use) with "
    "`bench/wrk/post_images.lua`, closed loop, one connection per wrk thread, real "
    "Fashion-MNIST test images in turn; every answer's `class_index` checked against the "
    "image's label (accuracy). Each server alone: started, ready, warmed with load, "
    "measured, stopped; one worker each unless the label says otherwise "
    "(LitServe: one API server process + one inference worker process; Ray Serve: its HTTP "
    "proxy actor + one replica on a local Ray instance; KServe: one uvicorn worker). (a) "
    "and (b) are one elf-serve process, measured interleaved. Bodies: raw `image/*` for all "
    "but (c), multipart for (c) (LitServe parses JSON or forms only). Batching peers: at "
    "most 32 per batch, 2 ms wait (LitServe batch_timeout, Ray batch_wait_timeout_s, "
    "KServe's agent maxLatency, reproduced in the model server: bench/baselines/batch_log.py);"
    " `batches` = the batch sizes each one ran during the point, from its own log. KServe and "
    "Ray Serve run in virtual environments of their own (`bench/peers.py`, pinned in "
    "`bench/baselines/requirements/`). ONNX Runtime: elf-serve with its settings (intra-op "
    "threads = CPUs / workers, no spinning); the peers with ORT's default session options. "
    "`server CPU ms/req` = CPU time of the server's processes / requests."
)


def write_report(results: Sequence[tuple[Path, dict[str, Any]]], folder: Path) -> Path:
    """folder/http.md (one section per result) and one plot per result beside it."""
    lines = ["# Serving over HTTP against the peers", "", METHOD, "", HEAVY_NOTE, ""]
    for path, result in results:
        head = pages.header(f"Run `{path.stem}`", result, path)
        lines += ["#" + head[0], *head[1:]]
        if result["settings"].get("quick"):
            lines += ["**A quick smoke test, not a measurement.**", ""]
        plot(result, folder / f"{path.stem}.png")
        lines += [f"![{path.stem}: requests/s and p99 against concurrency]({path.stem}.png)", ""]
        for key, info in result["models"].items():
            rows_k = [r for r in result["rows"] if r["model"] == key]
            section = model_section(key, info, rows_k, result.get("in_process", {}).get(key))
            lines += ["#" + section[0], *section[1:]]
    return pages.write("http", lines, folder)


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
    fig.suptitle(result.get("hardware_line", ""), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
