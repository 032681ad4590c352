"""Which ONNX Runtime execution providers to ask for, given what the installed build offers.

Pure logic: the caller passes `onnxruntime.get_available_providers()`, so this module needs no
onnxruntime (export and the server share it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
CHOICES = ("auto", "cpu", "cuda")

# A provider name, or (name, options) as ONNX Runtime takes it.
Provider = str | tuple[str, dict[str, Any]]
ProviderList = list[Provider]


class ProviderError(RuntimeError):
    """CUDA was asked for and this onnxruntime build cannot give it."""


def select_providers(choice: str, available: Sequence[str], device_id: int = 0) -> ProviderList:
    """cpu: CPU only; auto: CUDA (then CPU) when the build has it, else CPU; cuda: CUDA (then
    CPU), and ProviderError when the build has no CUDA provider."""
    if choice not in CHOICES:
        raise ValueError(f"unknown device {choice!r}; use one of {', '.join(CHOICES)}")
    if choice == "cpu":
        return [CPU]
    if CUDA in available:
        return [(CUDA, {"device_id": str(device_id)}), CPU]
    if choice == "cuda":
        raise ProviderError(
            f"cuda asked for, but this onnxruntime has no {CUDA} "
            f"(available: {', '.join(available)}); install onnxruntime-gpu or use auto/cpu"
        )
    return [CPU]
