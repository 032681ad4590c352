"""Expected agreement per exit: the rule on hand-made softmax, and the exported file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from elf_core.agreement import exit_agreement, load_agreement
from elf_core.exits import softmax
from elf_core.manifest import load_manifest
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
