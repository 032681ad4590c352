"""A numpy stand-in for the ONNX stage runner: confidences chosen per row and stage.

Row i is the host vector x = [i]; the "features" passed between stages are the row ids, so the
merge logic and the row order can be checked exactly. At stage k row i predicts class
labels[i][k] with softmax maximum confs[i][k].
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

NUM_CLASSES = 4


def logits_for(label: int, conf: float, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Logits whose softmax puts `conf` on `label` and spreads the rest evenly."""
    z = np.zeros(num_classes)
    z[label] = np.log(conf * (num_classes - 1) / (1.0 - conf))
    return z


class FakeStages:
    def __init__(
        self,
        confs: Sequence[Sequence[float]],
        labels: Sequence[Sequence[int]] | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.confs = np.asarray(confs, dtype=np.float64)
        self.num_stages = self.confs.shape[1]
        self.labels = (
            np.asarray(labels) if labels is not None else np.zeros_like(self.confs, dtype=int)
        )
        self.delay_s = delay_s
        self.batches: list[tuple[int, list[int]]] = []  # (stage, row ids) per run
        self.merges: list[int] = []  # number of parts per merge
        self.gate = threading.Event()  # runs wait here while it is clear
        self.gate.set()
        self.started = threading.Event()  # set when a run starts (before it waits at the gate)
        self.fail_stage: int | None = None

    def to_device(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1)[:, 0].astype(np.int64)

    def run(self, k: int, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        self.started.set()
        self.gate.wait(10)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_stage == k:
            raise RuntimeError(f"stage {k} exploded")
        self.batches.append((k, x.tolist()))
        logits = np.stack([logits_for(self.labels[i][k], self.confs[i][k]) for i in x])
        features = x.copy() if k < self.num_stages - 1 else None
        return features, logits.astype(np.float32)

    def merge(self, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        self.merges.append(len(parts))
        return np.concatenate([h[idx] for h, idx in parts])

    def sizes(self, stage: int) -> list[int]:
        return [len(ids) for k, ids in self.batches if k == stage]


def row_inputs(ids: Sequence[int]) -> list[np.ndarray]:
    return [np.array([[[float(i)]]], dtype=np.float32) for i in ids]
