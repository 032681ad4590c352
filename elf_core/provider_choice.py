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


def select_providers(
    choice: str,
    available: Sequence[str],
    *,
    cuda_options: dict[str, str] | None = None,
    cpu_fallback: bool = True,
) -> ProviderList:
    """cpu: CPU only; auto: CUDA when the build has it, else CPU; cuda: CUDA, and ProviderError
    when the build has none. CUDA is listed with `cuda_options` when given, and followed by CPU
    unless `cpu_fallback` is off."""
    if choice not in CHOICES:
        raise ValueError(f"unknown device {choice!r}; use one of {', '.join(CHOICES)}")
    if choice == "cpu":
        return [CPU]
    if CUDA in available:
        cuda: Provider = (CUDA, cuda_options) if cuda_options is not None else CUDA
        return [cuda, CPU] if cpu_fallback else [cuda]
    if choice == "cuda":
        # Callers prefix how cuda was asked for ("ELF_PROVIDERS=", "--device ").
        raise ProviderError(
            f"cuda but this onnxruntime has no {CUDA} "
            f"(available: {', '.join(available)}); install onnxruntime-gpu or use auto/cpu"
        )
    return [CPU]
