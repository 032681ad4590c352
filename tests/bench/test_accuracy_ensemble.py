"""Recycled predictions (bench.accuracy_ensemble): the ensemble rule and its fit."""

from __future__ import annotations

import numpy as np
import torch

from bench.accuracy_ensemble import ensembled, fit_weights


def _logits(labels: np.ndarray, knows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Logits that point at the label for the classes in `knows`, noise elsewhere."""
    z = rng.normal(0.0, 1.0, (labels.size, 10)).astype(np.float32)
    sure = np.isin(labels, knows)
    z[sure, labels[sure]] += 4.0
    return z


def test_identity_weights_are_the_plain_exits() -> None:
    z = [np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32) for _ in range(3)]
    out = ensembled(z, (torch.eye(3), torch.zeros(3, 4)))
    for a, b in zip(out, z, strict=True):
        want = b - np.log(np.exp(b).sum(axis=1, keepdims=True))
        np.testing.assert_allclose(a, want, atol=1e-5)


def test_a_later_exit_recycles_what_an_earlier_one_knows() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 4000)
    early, late = _logits(y, np.arange(5), rng), _logits(y, np.arange(5, 10), rng)
    w, b = fit_weights([early, late], y, [400] * 10, steps=200)
    assert w[0, 1] == 0.0  # an exit never sees a later one
    assert w[1, 0] > 0.3  # the deeper exit leans on the earlier one for classes 0-4
    acc_late = (late.argmax(1) == y).mean()
    acc_ens = (ensembled([early, late], (w, b))[1].argmax(1) == y).mean()
    assert acc_ens > acc_late + 0.2
