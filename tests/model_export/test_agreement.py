"""Expected agreement per exit: the rule on hand-made softmax, and the exported file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from elf_core.agreement import exit_agreement, load_agreement
from elf_core.exits import softmax
from elf_core.manifest import load_manifest
from model_export import calibrate_run
from model_export.export import ExportConfig, validation_steps
from model_export.runtime import StageChain, normalize
from tests.model_export.conftest import Exported
from training.data import build_splits


def test_agreement_counts_only_the_images_that_left_at_each_exit() -> None:
    # 4 images, 3 classes, 3 exits; thresholds 0.6 / 0.6.
    p0 = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.4, 0.3, 0.3], [0.5, 0.2, 0.3]])
    p1 = np.array([[0.1, 0.1, 0.8], [0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
    p2 = np.array([[0.1, 0.1, 0.8], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    got = exit_agreement([p0, p1, p2], [0.6, 0.6, 0.0])
    # exit 0: images 0 (class 0 vs final 2: no) and 1 (1 vs 1: yes); exit 1: image 2 (0 vs 1).
    assert [(e.exit, e.exited, e.agree, e.agreement) for e in got] == [
        (0, 2, 1, 0.5),
        (1, 1, 0, 0.0),
    ]
    none = exit_agreement([p0, p1, p2], [1.0, 1.0, 0.0])
    assert [(e.exited, e.agreement) for e in none] == [(0, None), (0, None)]


def test_export_writes_agreement_at_the_calibrated_thresholds(exported: Exported) -> None:
    d = exported.model_dir
    manifest, agreement = load_manifest(d), load_agreement(d)
    assert agreement is not None and agreement.thresholds == pytest.approx(manifest.thresholds)
    splits = build_splits(exported.config.data)
    x = normalize(splits.val.batch(torch.arange(len(splits.val))).numpy(), splits.mean, splits.std)
    probs = [softmax(z) for z in StageChain([d / s.file for s in manifest.stages])(x)]
    want = exit_agreement(probs, manifest.thresholds)
    assert agreement.images == len(splits.val) and agreement.exits == want
    assert sum(e.exited for e in want) > 0


def test_export_runs_the_stage_graphs_over_validation_once(
    exported: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A spy around the real split_probs (validation_probs and run_calibration call it through
    # calibrate_run), recording which split ran.
    runs: list[str] = []
    real = calibrate_run.split_probs

    def spy(*args: object, desc: str, **kw: object) -> calibrate_run.SplitProbs:
        runs.append(desc)
        return real(*args, desc=desc, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(calibrate_run, "split_probs", spy)
    d = tmp_path / "model"
    shutil.copytree(exported.model_dir, d)
    manifest = load_manifest(d)
    splits = build_splits(exported.config.data)
    cfg = ExportConfig(out=tmp_path / "unused", progress=False)
    calibrate, agreement = validation_steps(splits, cfg, "tiny-lt", ["CPUExecutionProvider"])
    per_stage = [(s.flops_body, s.flops_exit) for s in manifest.stages]
    cal = calibrate([d / s.file for s in manifest.stages], per_stage, d)
    assert cal.thresholds == pytest.approx(manifest.thresholds)
    got = agreement(d)
    assert runs == ["validation", "test"]  # the agreement step reused the validation pass
    assert got == load_agreement(exported.model_dir)
    # Other files than the ones calibrated (a copy): the agreement step runs them itself.
    other = tmp_path / "other"
    shutil.copytree(d, other)
    assert agreement(other) == got and runs == ["validation", "test", "agreement"]
