"""Execution-provider choice, for builds with and without CUDA."""

from __future__ import annotations

import pytest

from elf_core.providers import CPU, CUDA, ProviderError, select_providers


def test_cpu_build() -> None:
    assert select_providers("cpu", [CPU]) == [CPU]
    assert select_providers("auto", [CPU]) == [CPU]
    with pytest.raises(ProviderError, match="no CUDAExecutionProvider"):
        select_providers("cuda", [CPU])


def test_cuda_build() -> None:
    assert select_providers("cpu", [CUDA, CPU]) == [CPU]
    assert select_providers("auto", [CUDA, CPU], 1) == [(CUDA, {"device_id": "1"}), CPU]
    assert select_providers("cuda", [CUDA, CPU]) == [(CUDA, {"device_id": "0"}), CPU]


def test_unknown_choice() -> None:
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        select_providers("tpu", [CPU])
