"""Expected agreement of each early exit with the final exit, on the validation split.

The server's audit (ELF_AUDIT_RATE) finishes a sample of early answers at the final exit and
counts how often both give the same class. This file is its reference: among the validation
images that leave at exit k under the calibrated thresholds, the share whose class at exit k is
the final exit's class. Written as `agreement.json` next to the manifest (an optional file: a
model directory without it still loads; the manifest is unchanged). The file's schema lives with
the manifest's (elf_core/manifest.py), which the server imports.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from elf_core.exits import early_exit
from elf_core.manifest import (
    AGREEMENT_FILE,
    Agreement,
    ExitAgreement,
    load_agreement,
    write_agreement,
)

__all__ = [
    "AGREEMENT_FILE",
    "Agreement",
    "ExitAgreement",
    "exit_agreement",
    "load_agreement",
    "write_agreement",
]


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
