"""ONNX Runtime side (no torch): run the stage graphs, chained, and collect every exit's logits."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from elf_core.provider_choice import Provider, ProviderError, ProviderList, select_providers

# Batches of uint8 images [B, C, H, W] with their labels [B].
BatchSource = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]


def providers_for(device: str) -> ProviderList:
    """ONNX Runtime providers for "cpu", "auto" or "cuda" (elf_core.provider_choice' rule, with this
    onnxruntime's providers); "cuda" fails loudly when ORT lacks CUDA."""
    try:
        return select_providers(device, ort.get_available_providers())
    except ProviderError as exc:
        raise ProviderError(f"--device {exc}") from None


def session(path: Path, providers: Sequence[Provider]) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 [B, C, H, W] -> float32 [B, C, H, W]: (x / 255 - mean[c]) / std[c]."""
    m = np.asarray(mean, dtype=np.float32)[None, :, None, None]
    s = np.asarray(std, dtype=np.float32)[None, :, None, None]
    return np.asarray((images.astype(np.float32) / 255.0 - m) / s, dtype=np.float32)


class StageChain:
    """The stage graphs of a model directory, run one after another on every row."""

    def __init__(
        self, paths: Sequence[Path], providers: Sequence[Provider] = ("CPUExecutionProvider",)
    ) -> None:
        self.sessions = [session(p, providers) for p in paths]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """Normalized float32 [B, C, H, W] -> every exit's logits, each [B, num_classes]."""
        logits: list[np.ndarray] = []
        last = len(self.sessions) - 1
        for k, sess in enumerate(self.sessions):
            if k < last:
                x, out = sess.run(["features", "logits"], {"input": x})
            else:
                (out,) = sess.run(["logits"], {"input": x})
            logits.append(np.asarray(out))
        return logits


def collect_logits(
    run: Callable[[np.ndarray], list[np.ndarray]],
    batches: Iterator[tuple[np.ndarray, np.ndarray]],
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[list[np.ndarray], np.ndarray]:
    """Every exit's logits over a data set: ([K] arrays [N, num_classes], labels [N])."""
    per_exit: list[list[np.ndarray]] = []
    labels: list[np.ndarray] = []
    for images, y in batches:
        outs = run(normalize(images, mean, std))
        if not per_exit:
            per_exit = [[] for _ in outs]
        for acc, out in zip(per_exit, outs, strict=True):
            acc.append(out)
        labels.append(np.asarray(y, dtype=np.int64))
    if not labels:
        raise ValueError("no images to evaluate")
    return [np.concatenate(a) for a in per_exit], np.concatenate(labels)
