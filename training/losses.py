"""The ELF exit mask over pluggable base losses (cross-entropy, LDAM-DRW, balanced softmax).

Every example runs through every exit. Example i exits at e_i, the first exit k whose prediction
is correct with softmax maximum >= tau_k (e_i = K-1 if none). Its loss is
sum_{k <= e_i} w_k * base_k(i), plus `exited_weight` * w_k * base_k(i) for the deeper exits.
The mask is computed without gradient. The batch loss is the (class-weighted) mean over examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

METHODS = ("standard", "multi-exit", "elf")
BASE_LOSSES = ("ce", "ldam", "balanced_softmax")


@dataclass(frozen=True)
class LossConfig:
    method: str = "elf"  # standard (final exit only) | multi-exit (every exit) | elf
    # balanced_softmax by default: the best ELF setting of bench/results/accuracy.md.
    base: str = "balanced_softmax"  # ce | ldam (LDAM with deferred re-weighting) | balanced_softmax
    # Confidence an exit needs (with a correct prediction) for an example to stop there in
    # training: one value for every auxiliary exit, or one per auxiliary exit (K-1 values).
    tau_train: tuple[float, ...] = (0.9,)
    # Per-exit loss weights w_k (K values); empty = all 1.
    exit_weights: tuple[float, ...] = ()
    # Weight of the deeper exits' losses for examples that already exited (0 = plain ELF).
    exited_weight: float = 0.0
    # ELF only: train every exit on every example for this many epochs before masking.
    elf_warmup_epochs: int = 0
    ldam_max_margin: float = 0.5
    ldam_scale: float = 30.0
    # LDAM only: class-balanced weights (effective number, beta) from this fraction of the epochs.
    drw_start: float = 0.8
    drw_beta: float = 0.9999

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if self.base not in BASE_LOSSES:
            raise ValueError(f"unknown base loss {self.base!r}; choose one of {BASE_LOSSES}")
        if not self.tau_train or any(not 0.0 <= t <= 1.0 for t in self.tau_train):
            raise ValueError(f"tau_train values must lie in [0, 1], got {self.tau_train}")
        if any(w < 0 for w in self.exit_weights) or self.exited_weight < 0:
            raise ValueError("exit weights and exited_weight must be non-negative")
        if self.elf_warmup_epochs < 0 or not 0.0 <= self.drw_start <= 1.0:
            raise ValueError("elf_warmup_epochs >= 0 and drw_start in [0, 1] are required")


# ---------------------------------------------------------------------------------------------
# Base losses: logits [B, C], targets [B] -> per-example loss [B]


def ldam_margins(class_counts: Sequence[int], max_margin: float) -> Tensor:
    """m_j proportional to n_j^(-1/4), the largest equal to max_margin. [C]"""
    m = torch.tensor([1.0 / n**0.25 for n in class_counts], dtype=torch.float32)
    return m * (max_margin / m.max())


def class_balanced_weights(class_counts: Sequence[int], beta: float) -> Tensor:
    """(1 - beta) / (1 - beta^n_j), normalised to sum to the number of classes. [C]"""
    w = torch.tensor([(1.0 - beta) / (1.0 - beta**n) for n in class_counts], dtype=torch.float32)
    return w * (len(class_counts) / w.sum())


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits, targets, reduction="none")


def ldam(logits: Tensor, targets: Tensor, margins: Tensor, scale: float) -> Tensor:
    """LDAM: the target logit lowered by scale * m_y before cross-entropy.

    With the cosine classifier (logits = scale * cos) this is CE(scale * (cos - m_y e_y)), as in
    Cao et al. 2019.
    """
    offset = (
        F.one_hot(targets, logits.shape[1]).to(logits.dtype) * (scale * margins[targets])[:, None]
    )
    return F.cross_entropy(logits - offset, targets, reduction="none")


def balanced_softmax(logits: Tensor, targets: Tensor, log_prior: Tensor) -> Tensor:
    """Cross-entropy of logits + log(class prior) (Ren et al. 2020). log_prior: [C]"""
    return F.cross_entropy(logits + log_prior, targets, reduction="none")


# ---------------------------------------------------------------------------------------------
# The ELF mask


@torch.no_grad()
def exit_index(logits: Sequence[Tensor], targets: Tensor, taus: Sequence[float]) -> Tensor:
    """e_i: the first exit k < K-1 that is correct with confidence >= taus[k], else K-1. [B]"""
    K = len(logits)
    e = torch.full_like(targets, K - 1)
    for k in reversed(range(K - 1)):
        conf, pred = F.softmax(logits[k].detach().float(), dim=1).max(dim=1)
        e = torch.where((pred == targets) & (conf >= taus[k]), torch.full_like(e, k), e)
    return e


def exit_mask(e: Tensor, num_exits: int, exited_weight: float = 0.0) -> Tensor:
    """[B, K]: 1 for exits 0..e_i, exited_weight for the exits after e_i."""
    ks = torch.arange(num_exits, device=e.device)[None, :]
    inside = (ks <= e[:, None]).float()
    return inside + exited_weight * (1.0 - inside)


# ---------------------------------------------------------------------------------------------
# The training loss


@dataclass
class LossOutput:
    loss: Tensor  # scalar, with gradient
    exit_index: Tensor  # [B] where each example stopped (K-1 for standard / multi-exit)
    per_exit: Tensor  # [K] unweighted mean base loss of each exit (detached)


class MultiExitLoss:
    """Combines the method (standard / multi-exit / elf) with a base loss; call set_epoch first."""

    def __init__(
        self, cfg: LossConfig, class_counts: Sequence[int], num_exits: int, epochs: int
    ) -> None:
        self.cfg = cfg
        self.num_exits = num_exits
        self.taus = _per_aux_exit(cfg.tau_train, num_exits)
        self.exit_weights = torch.tensor(
            cfg.exit_weights if cfg.exit_weights else [1.0] * num_exits, dtype=torch.float32
        )
        if len(self.exit_weights) != num_exits:
            raise ValueError(f"exit_weights needs {num_exits} values, got {cfg.exit_weights}")
        if any(n <= 0 for n in class_counts):
            raise ValueError(f"every class needs training examples, counts {list(class_counts)}")
        total = float(sum(class_counts))
        self.log_prior = torch.tensor([math.log(n / total) for n in class_counts])
        self.margins = ldam_margins(class_counts, cfg.ldam_max_margin)
        self.drw_weights = class_balanced_weights(class_counts, cfg.drw_beta)
        self.drw_epoch = round(cfg.drw_start * epochs)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def drw_active(self) -> bool:
        return self.cfg.base == "ldam" and self.epoch >= self.drw_epoch

    @property
    def masking(self) -> bool:
        return self.cfg.method == "elf" and self.epoch >= self.cfg.elf_warmup_epochs

    def base_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self.cfg.base == "ldam":
            return ldam(logits, targets, self.margins.to(logits.device), self.cfg.ldam_scale)
        if self.cfg.base == "balanced_softmax":
            return balanced_softmax(logits, targets, self.log_prior.to(logits.device))
        return cross_entropy(logits, targets)

    def __call__(self, logits: Sequence[Tensor], targets: Tensor) -> LossOutput:
        K = self.num_exits
        if len(logits) != K:
            raise ValueError(f"expected {K} exits' logits, got {len(logits)}")
        losses = torch.stack([self.base_loss(z, targets) for z in logits], dim=1)  # [B, K]
        if self.masking:
            e = exit_index(logits, targets, self.taus)
            weights = exit_mask(e, K, self.cfg.exited_weight)
        else:
            e = torch.full_like(targets, K - 1)
            weights = torch.ones_like(losses)
            if self.cfg.method == "standard":
                weights = torch.zeros_like(losses)
                weights[:, K - 1] = 1.0
        weights = weights * self.exit_weights.to(losses.device)[None, :]
        per_example = (weights * losses).sum(dim=1)  # [B]
        if self.drw_active:
            cw = self.drw_weights.to(losses.device)[targets]  # [B]
            loss = (cw * per_example).sum() / cw.sum()
        else:
            loss = per_example.mean()
        return LossOutput(loss, e, losses.detach().mean(dim=0))


def _per_aux_exit(taus: Sequence[float], num_exits: int) -> list[float]:
    if len(taus) == 1:
        return [taus[0]] * (num_exits - 1)
    if len(taus) != num_exits - 1:
        raise ValueError(f"tau_train needs 1 or {num_exits - 1} values, got {list(taus)}")
    return list(taus)
