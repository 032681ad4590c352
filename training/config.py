"""TrainConfig: one frozen dataclass per part, nested; round-trips through plain JSON dicts."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from elf_core.calibration import DEFAULT_TOLERANCE
from training.data import AugmentConfig, DataConfig
from training.losses import LossConfig
from training.networks import ModelConfig

T = TypeVar("T")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    warmup_epochs: int = 1  # linear warm-up from lr / 10 (per step)
    schedule: str = "cosine"  # cosine (to 0) | step (x gamma at each milestone)
    milestones: tuple[int, ...] = ()  # step schedule; empty = 60% and 80% of the epochs
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"unknown schedule {self.schedule!r}; use cosine or step")
        if self.lr <= 0 or self.warmup_epochs < 0 or self.weight_decay < 0:
            raise ValueError("lr > 0, warmup_epochs >= 0 and weight_decay >= 0 are required")


@dataclass(frozen=True)
class TrainConfig:
    out: Path = Path("runs/default")
    epochs: int = 30
    batch_size: int = 128  # per process under torchrun
    eval_batch_size: int = 500
    seed: int = 0
    device: str = "auto"  # auto (cuda when present) | cpu | cuda
    workers: int = 0  # DataLoader workers for lazily decoded data sets (in-memory sets need none)
    threads: int = 0  # torch intra-op threads on CPU; 0 = CPU cores / processes
    progress: bool = True  # tqdm bars
    eval_every: int = 1  # validation every this many epochs (and after the last)
    resume: bool = False  # continue from OUT/checkpoint.pt when it exists
    # Fixed thresholds (one value for every exit) reported on the test set after training.
    eval_thresholds: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
    calibration_tolerance: float = DEFAULT_TOLERANCE  # balanced accuracy below the best point
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Provenance, not configuration: the shell-quoted command line that started this run (set by
    # elf-train; the export copies it into the manifest). Ignored when a resumed run's config is
    # compared with the checkpoint's.
    command: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.out, str):
            object.__setattr__(self, "out", Path(self.out))
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("epochs, batch_size and eval_batch_size must be >= 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"unknown device {self.device!r}; use auto, cpu or cuda")
        if self.eval_every < 1:
            raise ValueError("eval_every must be >= 1")
        if self.workers < 0 or self.threads < 0:
            raise ValueError("workers and threads must be >= 0")
        if self.loss.method == "elf" and self.loss.base == "ldam":
            raise ValueError(
                "--method elf with --loss ldam is refused: LDAM's scaled logits (the cosine "
                "classifier's scale) make a small gap read as a confident softmax against "
                "--tau-train, so most training images count as exited at the first exit and "
                "the final exit collapses; use --loss balanced_softmax or ce with elf, or "
                "ldam with --method standard or multi-exit"
            )


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain JSON-able values (Paths become strings, tuples lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    return obj


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a (nested) config dataclass from `to_dict` output; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    kwargs = {k: _convert(hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return _convert(args[0], value) if len(args) == 1 else value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value)  # type: ignore[arg-type]
    if hint is Path:
        return Path(value)
    if typing.get_origin(hint) is tuple:
        return tuple(value)
    return value
