"""Expected agreement of each early exit with the final exit, on the validation split.

The server's audit (ELF_AUDIT_RATE) finishes a sample of early answers at the final exit and
counts how often both give the same class. This file is its reference: among the validation
images that leave at exit k under the calibrated thresholds, the share whose class at exit k is
the final exit's class. Written as `agreement.json` next to the manifest (an optional file: a
model directory without it still loads; the manifest is unchanged). Torch-free: the server reads
it through `load_agreement`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from model_export.calibration import early_exit

AGREEMENT_FILE = "agreement.json"


class ExitAgreement(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    exit: int = Field(ge=0)
    exited: int = Field(ge=0)  # validation images that left at this exit
    agree: int = Field(ge=0)  # of those, same class as the final exit
    agreement: float | None = Field(ge=0.0, le=1.0)  # agree / exited; None when none left here


class Agreement(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    split: str
    images: int = Field(gt=0)
    thresholds: list[float]  # the operating point it was measured at ([K], last 0)
    exits: list[ExitAgreement]  # the auxiliary exits 0..K-2


def exit_agreement(probs: Sequence[np.ndarray], thresholds: Sequence[float]) -> list[ExitAgreement]:
    """probs[k]: [N, C] softmax of exit k; agreement of each auxiliary exit with the last."""
    preds, idx = early_exit(probs, thresholds)  # [N], [N]
    final = np.asarray(probs[-1]).argmax(axis=1)  # [N]
    out = []
    for k in range(len(probs) - 1):
        here = idx == k
        n, a = int(here.sum()), int((preds[here] == final[here]).sum())
        out.append(ExitAgreement(exit=k, exited=n, agree=a, agreement=a / n if n else None))
    return out


def write_agreement(agreement: Agreement, model_dir: Path) -> Path:
    path = model_dir / AGREEMENT_FILE
    path.write_text(agreement.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


def load_agreement(model_dir: Path) -> Agreement | None:
    """agreement.json of a model directory; None when it has none; ValueError names a bad one."""
    path = model_dir / AGREEMENT_FILE
    if not path.is_file():
        return None
    try:
        return Agreement.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except ValueError as exc:
        raise ValueError(f"{path}: not a valid agreement file ({exc})") from exc
