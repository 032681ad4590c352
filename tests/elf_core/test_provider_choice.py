"""Execution-provider choice, for builds with and without CUDA."""

from __future__ import annotations

import pytest

from elf_core.provider_choice import CPU, CUDA, ProviderError, select_providers


def test_cpu_build() -> None:
    assert select_providers("cpu", [CPU]) == [CPU]
    assert select_providers("auto", [CPU]) == [CPU]
    with pytest.raises(ProviderError, match="no CUDAExecutionProvider"):
        select_providers("cuda", [CPU])


def test_cuda_build() -> None:
    assert select_providers("cpu", [CUDA, CPU]) == [CPU]
    opts = {"device_id": "1"}
    assert select_providers("auto", [CUDA, CPU], cuda_options=opts) == [(CUDA, opts), CPU]
    assert select_providers("cuda", [CUDA, CPU]) == [CUDA, CPU]
    assert select_providers("cuda", [CUDA, CPU], cpu_fallback=False) == [CUDA]


def test_unknown_choice() -> None:
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        select_providers("tpu", [CPU])
