"""docs/benchmarks/retrofit.md from the retrofit benchmark's JSONs (bench/retrofit.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench import pages

INTRO = (
    "`elf-export retrofit` adds exits to an ONNX classifier that has none. `heavy`: the "
    "resnet50-style network at 224 px (random backbone, bench/heavy_model.py) exported with its "
    "final output only, retrofitted on a small Fashion-MNIST image folder and served by a real "
    "elf-serve, the calibrated thresholds against no early exit (switched through the admin "
    "API). `fmnist`: the standard full-depth network of the accuracy benchmark, reduced to its "
    "final output, retrofitted, and compared on test with networks trained end to end with "
    "exits (the accuracy benchmark's row `retrofit-bs`, one section per seed)."
)


def heavy_lines(r: dict[str, Any]) -> list[str]:
    cal, s = r["calibration"], r.get("serving")
    test = cal["test"]  # the chosen point on the test split
    lines = [
        f"Retrofit took {r['retrofit_seconds'] / 60:.0f} min; cumulative FLOPs ratio per exit "
        f"{[round(x, 3) for x in r['cumulative_flops_ratio']]}. Calibrated point on test: "
        f"balanced accuracy {100 * test['balanced_accuracy']:.1f}%, FLOPs ratio "
        f"{test['flops_ratio']:.3f}, exit mix {[round(x, 2) for x in test['exit_rates']]}.",
        "",
    ]
    if s:
        med = s["seconds_per_image_median"]
        lines += [
            f"Served ({s['images']} images, {s['rounds']} rounds): "
            f"{1e3 * med['calibrated']:.1f} ms per image at the calibrated thresholds against "
            f"{1e3 * med['no early exit']:.1f} ms with no early exit: **{s['speed_up']:.2f}x**; "
            f"exit mix {s['exit_mix_calibrated']}.",
            "",
        ]
    return lines


def sources(results: Path = pages.RESULTS) -> list[Path]:
    """The heavy results and the retrofit rows of the accuracy benchmark (fmnist)."""
    return sorted(results.glob("accuracy/retrofit-*")) + sorted(results.glob("retrofit-*.json"))


def write_page(paths: list[Path], folder: Path = pages.PAGES) -> Path:
    lines = ["# Retrofit: exits added to existing classifiers", "", INTRO, ""]
    for path in paths:
        r = pages.load(path)
        runs = [(f"`{path.stem}`", r)]
        if "seeds" in r:  # an accuracy row file: one record per seed, the result inside
            seeds = sorted(r["seeds"].items(), key=lambda kv: int(kv[0]))
            runs = [(f"`{path.stem}` seed {s}", x["retrofit"]) for s, x in seeds if "retrofit" in x]
        for title, run in runs:
            head = pages.header(title, run, path)
            lines += ["#" + head[0], *head[1:]]
            lines += heavy_lines(run) if "serving" in run else [run["table"], ""]
    return pages.write("retrofit", lines, folder)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench retrofit report", description=__doc__)
    p.add_argument("--results", type=Path, nargs="+", default=None,
                   help="retrofit-*.json, accuracy/retrofit-*.json")  # fmt: skip
    p.add_argument("--pages", type=Path, default=pages.PAGES)
    a = p.parse_args(argv)
    write_page(a.results or sources(), a.pages)
    return 0
