"""The ELF exit mask and the base losses against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import (
    LossConfig,
    MultiExitLoss,
    balanced_softmax,
    class_balanced_weights,
    cross_entropy,
    exit_index,
    exit_mask,
    ldam,
    ldam_margins,
)

COUNTS = [100, 10, 1]


def _ce(z: list[float], y: int) -> float:
    return -z[y] + math.log(sum(math.exp(v) for v in z))


# Three exits, three examples, three classes (labels 0, 1, 2):
#   easy:   exit 0 correct with softmax max ~0.98 -> exits at 0
#   medium: exit 0 correct but unsure (~0.42), exit 1 correct and sure -> exits at 1
#   hard:   wrong everywhere -> exits at 2 (the final classifier)
LOGITS = [
    [[5.0, 0.0, 0.0], [0.0, 0.5, 0.0], [3.0, 0.0, 0.0]],
    [[0.0, 0.0, 0.0], [0.0, 6.0, 0.0], [4.0, 0.0, 0.0]],
    [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]],
]
TARGETS = [0, 1, 2]


def _logits(requires_grad: bool = False) -> list[torch.Tensor]:
    per_exit = [[LOGITS[k][i] for i in range(3)] for k in range(3)]
    return [torch.tensor(z, requires_grad=requires_grad) for z in per_exit]


def test_exit_index_and_mask_by_hand() -> None:
    e = exit_index(_logits(), torch.tensor(TARGETS), [0.9, 0.9])
    assert e.tolist() == [0, 1, 2]
    assert exit_mask(e, 3).tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert exit_mask(e, 3, 0.25).tolist() == [[1, 0.25, 0.25], [1, 1, 0.25], [1, 1, 1]]
    # A lower tau on exit 0 lets the medium example (confidence 0.42) stop there.
    assert exit_index(_logits(), torch.tensor(TARGETS), [0.4, 0.9]).tolist() == [0, 0, 2]


def test_elf_loss_value_and_gradients_by_hand() -> None:
    logits = _logits(requires_grad=True)
    fn = MultiExitLoss(LossConfig(method="elf", base="ce"), COUNTS, 3, epochs=10)
    out = fn(logits, torch.tensor(TARGETS))
    easy = _ce(LOGITS[0][0], 0)
    medium = _ce(LOGITS[0][1], 1) + _ce(LOGITS[1][1], 1)
    hard = sum(_ce(LOGITS[k][2], 2) for k in range(3))
    assert out.loss.item() == pytest.approx((easy + medium + hard) / 3, rel=1e-5)
    assert out.exit_index.tolist() == [0, 1, 2]
    out.loss.backward()
    grads = [z.grad for z in logits]
    assert all(g is not None for g in grads)
    # The easy example contributes only to exit 0; the hard one to every exit.
    assert grads[0][0].abs().sum() > 0 and grads[1][0].abs().sum() == 0  # type: ignore[index]
    assert grads[2][0].abs().sum() == 0 and grads[2][1].abs().sum() == 0  # type: ignore[index]
    assert all(g[2].abs().sum() > 0 for g in grads)  # type: ignore[index]


def test_methods_standard_multi_exit_and_warmup() -> None:
    y = torch.tensor(TARGETS)
    all_exits = sum(_ce(LOGITS[k][i], i) for k in range(3) for i in range(3)) / 3
    final = sum(_ce(LOGITS[2][i], i) for i in range(3)) / 3
    multi = MultiExitLoss(LossConfig(method="multi-exit", base="ce"), COUNTS, 3, 10)
    standard = MultiExitLoss(LossConfig(method="standard", base="ce"), COUNTS, 3, 10)
    assert multi(_logits(), y).loss.item() == pytest.approx(all_exits, rel=1e-5)
    assert standard(_logits(), y).loss.item() == pytest.approx(final, rel=1e-5)
    warm = MultiExitLoss(LossConfig(method="elf", base="ce", elf_warmup_epochs=2), COUNTS, 3, 10)
    warm.set_epoch(1)
    assert warm(_logits(), y).loss.item() == pytest.approx(all_exits, rel=1e-5)
    warm.set_epoch(2)
    assert warm(_logits(), y).loss.item() < all_exits


def test_exit_weights_and_exited_weight() -> None:
    cfg = LossConfig(method="elf", base="ce", exit_weights=(0.5, 1.0, 2.0), exited_weight=0.1)
    out = MultiExitLoss(cfg, COUNTS, 3, 10)(_logits(), torch.tensor(TARGETS))
    w = [0.5, 1.0, 2.0]
    mask: list[list[float]] = [[1, 0.1, 0.1], [1, 1, 0.1], [1, 1, 1]]
    expected = sum(mask[i][k] * w[k] * _ce(LOGITS[k][i], i) for i in range(3) for k in range(3))
    assert out.loss.item() == pytest.approx(expected / 3, rel=1e-5)


def test_cross_entropy_by_hand() -> None:
    z = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    got = cross_entropy(z, torch.tensor([0, 2]))
    assert got.tolist() == pytest.approx([_ce([2, 0, -1], 0), _ce([0, 1, 0], 2)], rel=1e-6)


def test_ldam_margins_and_loss_by_hand() -> None:
    m = ldam_margins([10000, 100, 1], max_margin=0.5)
    # proportional to n^(-1/4): 0.1, 0.316, 1 -> scaled so the largest is 0.5
    assert m.tolist() == pytest.approx([0.05, 0.5 / math.sqrt(10), 0.5], rel=1e-6)
    z = torch.tensor([[3.0, 1.0, 0.0]])
    got = ldam(z, torch.tensor([1]), m, scale=30.0).item()
    assert got == pytest.approx(_ce([3.0, 1.0 - 30 * 0.5 / math.sqrt(10), 0.0], 1), rel=1e-6)


def test_drw_weights_and_deferred_start() -> None:
    w = class_balanced_weights([1, 2], beta=0.9)
    raw = [0.1 / 0.1, 0.1 / (1 - 0.81)]
    assert w.tolist() == pytest.approx([2 * r / sum(raw) for r in raw], rel=1e-6)
    cfg = LossConfig(method="multi-exit", base="ldam", drw_start=0.8)
    fn = MultiExitLoss(cfg, COUNTS, 3, epochs=10)
    y = torch.tensor(TARGETS)
    fn.set_epoch(7)
    assert not fn.drw_active
    plain = fn(_logits(), y).loss.item()
    fn.set_epoch(8)
    assert fn.drw_active
    cw = class_balanced_weights(COUNTS, 0.9999)
    per_example = torch.stack([fn.base_loss(z, y) for z in _logits()]).sum(0)
    weighted = ((cw[y] * per_example).sum() / cw[y].sum()).item()
    assert fn(_logits(), y).loss.item() == pytest.approx(weighted, rel=1e-5)
    assert weighted != pytest.approx(plain)


def test_balanced_softmax_by_hand() -> None:
    prior = [100 / 111, 10 / 111, 1 / 111]
    log_prior = torch.tensor([math.log(p) for p in prior])
    z = [0.5, 0.0, 1.0]
    got = balanced_softmax(torch.tensor([z]), torch.tensor([2]), log_prior).item()
    assert got == pytest.approx(
        _ce([v + math.log(p) for v, p in zip(z, prior, strict=True)], 2), rel=1e-6
    )
    fn = MultiExitLoss(LossConfig(method="standard", base="balanced_softmax"), COUNTS, 3, 10)
    assert fn.base_loss(torch.tensor([z]), torch.tensor([2])).item() == pytest.approx(got)


def test_invalid_configs_fail_loudly() -> None:
    with pytest.raises(ValueError, match="method"):
        LossConfig(method="sdn")
    with pytest.raises(ValueError, match="tau_train"):
        MultiExitLoss(LossConfig(tau_train=(0.9, 0.8, 0.7)), COUNTS, 3, 10)
    with pytest.raises(ValueError, match="exit_weights"):
        MultiExitLoss(LossConfig(exit_weights=(1.0, 1.0)), COUNTS, 3, 10)
    with pytest.raises(ValueError, match="every class"):
        MultiExitLoss(LossConfig(), [5, 0, 1], 3, 10)
