"""Recycled predictions (Zero Time Waste's ensembling) measured on an exported model directory.

Exit k answers with a geometric ensemble of its own and every earlier exit's softmax:
log q_k = sum_{j <= k} w_kj log p_j + b_k (w_kj >= 0, b_k a per-class bias), the weights fitted
on the training split with the exits frozen (balanced softmax, as the exits were trained), the
thresholds chosen on validation, measured once on test. Plain exits are calibrated the same way
in the same run, so the row it writes (`<row>+ens`, a variant of `<row>`) compares like with like.

    python -m bench accuracy ensemble --model-dir DIR --row elf-bs-hard --seed 0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench import machine
from bench.accuracy_runs import SCHEMA, write_result
from elf_core.accuracy import class_thirds
from elf_core.calibration import CurvePoint, calibrate, evaluate_thresholds
from elf_core.exits import softmax
from elf_core.manifest import load_manifest
from model_export.calibrate_run import iter_batches
from model_export.runtime import StageChain, collect_logits
from model_export.splits import model_splits
from training.losses import balanced_softmax

Split = tuple[list[np.ndarray], np.ndarray]  # every exit's logits [N, C], labels [N]


def exit_logits(model_dir: Path) -> tuple[dict[str, Split], list[float], list[int]]:
    """Logits of every exit on train / val / test, cumulative FLOPs ratios, training counts."""
    manifest = load_manifest(model_dir)
    splits = model_splits(model_dir, manifest)
    chain = StageChain([model_dir / s.file for s in manifest.stages])
    out = {
        name: collect_logits(
            chain, iter_batches(getattr(splits, name), 256, name, False), splits.mean, splits.std
        )
        for name in ("train", "val", "test")
    }
    ratio = [e.cumulative_flops / manifest.flops_full for e in manifest.exits]
    return out, ratio, list(splits.train_class_counts)


def fit_weights(
    logits: Sequence[np.ndarray], labels: np.ndarray, counts: Sequence[int], steps: int = 300
) -> tuple[torch.Tensor, torch.Tensor]:
    """w [K, K] (lower triangular, >= 0; starts as the identity: plain exits) and b [K, C]."""
    lp = torch.stack([F.log_softmax(torch.from_numpy(z).float(), 1) for z in logits])
    k, _, c = lp.shape
    mask = torch.tril(torch.ones(k, k))
    w = torch.eye(k).requires_grad_(True)
    b = torch.zeros(k, c, requires_grad=True)
    prior = torch.tensor([math.log(max(n, 1) / sum(counts)) for n in counts])
    y = torch.from_numpy(labels)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(steps):
        q = torch.einsum("kj,jnc->knc", w.clamp(min=0) * mask, lp) + b[:, None, :]
        loss = sum(balanced_softmax(q[i], y, prior).mean() for i in range(k))
        opt.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        opt.step()
    return (w.clamp(min=0) * mask).detach(), b.detach()


def ensembled(
    logits: Sequence[np.ndarray], wb: tuple[torch.Tensor, torch.Tensor]
) -> list[np.ndarray]:
    lp = torch.stack([F.log_softmax(torch.from_numpy(z).float(), 1) for z in logits])
    q = torch.einsum("kj,jnc->knc", wb[0], lp) + wb[1][:, None, :]
    return [q[i].numpy() for i in range(len(logits))]


def measure(val: Split, test: Split, ratio: list[float], counts: list[int]) -> dict[str, Any]:
    """Thresholds chosen on val (plain calibration, tolerance 0.005); best and chosen on test."""
    tail = class_thirds(counts)[2]
    pv, pt = [softmax(z) for z in val[0]], [softmax(z) for z in test[0]]
    res = calibrate(pv, val[1], ratio, 0.005, tail_classes=tail)

    def point(p: CurvePoint) -> dict[str, Any]:
        q = evaluate_thresholds(pt, test[1], ratio, p.thresholds, tail_classes=tail)
        return {"balanced_top1": q.balanced_accuracy, "tail": q.tail_accuracy,
                "flops_saved": 1.0 - q.flops_ratio, "thresholds": list(q.thresholds),
                "exit_rates": list(q.exit_rates),
                "val_balanced_top1": p.balanced_accuracy}  # fmt: skip

    return {"best": point(res.best), "chosen": point(res.chosen)}


def run(model_dir: Path, row: str, seed: int, results_dir: Path) -> Path:
    """Plain and ensembled exits of `model_dir`, a seed of `row`, into row `<row>+ens`."""
    torch.set_num_threads(1)
    data, ratio, counts = exit_logits(model_dir)
    wb = fit_weights(*data["train"], counts)
    ens = {n: (ensembled(data[n][0], wb), data[n][1]) for n in ("val", "test")}
    return write_result(results_dir, {
        **machine.stamp("accuracy"), "schema": SCHEMA, "row": f"{row}+ens", "seed": seed,
        "variant": {"of": row, "adds": "ensembling"},
        "command_source": "recorded by bench accuracy ensemble", "model_dir": str(model_dir),
        "test": measure(ens["val"], ens["test"], ratio, counts),
        "plain_same_calibration": measure(data["val"], data["test"], ratio, counts),
        "weights": wb[0].numpy().round(4).tolist(),
    })  # fmt: skip
