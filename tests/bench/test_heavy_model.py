"""bench.heavy_model builds a servable model directory through export_model, with its own
calibration step (exit-mix quantiles) in place of the validation-split search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.heavy_model import CONFIG_FILE, BenchModelConfig, ensure, inputs
from elf_core.exits import early_exit, softmax
from elf_core.flops import exit_rates
from elf_core.manifest import load_manifest
from model_export.report import CURVE_FILE
from model_export.runtime import StageChain


@pytest.mark.slow
def test_stand_in_model_is_exported_verified_and_has_the_exit_mix(tmp_path: Path) -> None:
    cfg = BenchModelConfig(
        out=tmp_path / "m",
        arch="resnet32",
        size=28,
        channels=1,
        exit_mix=(0.5, 0.3, 0.2),
        fit_images=96,
        calib_images=100,
    )
    out = ensure(cfg)
    m = load_manifest(out)  # every sha256 checked
    assert m.name == "resnet32-28px-random" and m.version == "bench-1"
    assert (out / CONFIG_FILE).is_file() and (out / "full.onnx").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # the staging directory is gone
    # calibration.json holds the threshold curve: the load controller's menu (bench.adaptive).
    assert m.calibration is not None and m.calibration.curve_file == CURVE_FILE
    curve = json.loads((out / CURVE_FILE).read_text())
    assert curve["curve"] and curve["pareto"]
    assert m.calibration.chosen.exit_rates == pytest.approx([0.5, 0.3, 0.2], abs=0.011)
    # The manifest's thresholds, applied with the exit rule to the calibration images through
    # the exported graphs, give that mix again.
    x, _ = inputs(cfg, cfg.fit_images, cfg.calib_images)
    probs = [softmax(z) for z in StageChain([out / s.file for s in m.stages])(x)]
    _, idx = early_exit(probs, m.thresholds)
    assert exit_rates(idx, 3) == pytest.approx(m.calibration.chosen.exit_rates)
    assert m.calibration.chosen.flops_ratio == pytest.approx(
        float(np.mean([m.exits[k].cumulative_flops for k in idx])) / m.flops_full
    )
    assert ensure(cfg) == out  # cached: same config, nothing rebuilt
