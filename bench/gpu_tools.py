"""Helpers shared by tests/server/test_gpu.py and bench/gpu_smoke.py: a guard against device->host
copies, GPU memory readings, and a random-size batch workload through the engine."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import onnxruntime as ort

from server.engine.runner import OnnxStageRunner


class HostCopyError(AssertionError):
    """A device tensor was converted to numpy where the engine must keep it on the device."""


@contextmanager
def forbid_host_copies(device: str = "cuda") -> Iterator[list[tuple[int, ...]]]:
    """While active, OrtValue.numpy() on a tensor that lives on `device` raises HostCopyError.

    The engine binds logits to the host and features to the device, so in its hot path only
    host tensors may be read; yields the shapes of the host reads that happened (for asserts).
    """
    original: Callable[[ort.OrtValue], np.ndarray] = ort.OrtValue.numpy
    host_reads: list[tuple[int, ...]] = []

    def guarded(self: ort.OrtValue) -> np.ndarray:
        if self.device_name().lower() == device:
            raise HostCopyError(f"{device} tensor {self.shape()} copied to the host")
        host_reads.append(tuple(self.shape()))
        return original(self)

    ort.OrtValue.numpy = guarded
    try:
        yield host_reads
    finally:
        ort.OrtValue.numpy = original


def gpu_memory_used_mib(device_id: int = 0) -> float | None:
    """Device memory in use (all processes), from nvidia-smi; None where there is none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    out = subprocess.run(
        [smi, f"--id={device_id}", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return float(out.stdout.strip().splitlines()[0])


def random_batches(
    runner: OnnxStageRunner,
    batches: int,
    max_batch: int,
    *,
    seed: int = 0,
    every: int = 0,
    sample: Callable[[int], None] | None = None,
) -> int:
    """`batches` batches of random size 1..max_batch through every stage, dropping a random
    share of rows after each stage and joining the survivors with earlier survivors up to
    max_batch rows (as the batcher does); calls sample(i) every `every` batches.
    Returns the rows that left (exited or finished)."""
    rng = np.random.default_rng(seed)
    pre = runner.manifest.preprocessing
    leftovers: list[list[tuple[ort.OrtValue, np.ndarray]]] = [[] for _ in range(runner.num_stages)]
    done = 0
    for i in range(batches):
        b = int(rng.integers(1, max_batch + 1))
        x = rng.normal(size=(b, pre.channels, pre.height, pre.width)).astype(np.float32)
        h: ort.OrtValue | None = runner.to_device(x)
        for k in range(runner.num_stages):
            assert h is not None
            h, logits = runner.run(k, h)
            if h is None:
                done += len(logits)
                break
            keep = np.flatnonzero(rng.random(len(logits)) < 0.6)
            done += len(logits) - len(keep)
            if keep.size == 0:
                break
            parts = [(h, keep)]
            for part in reversed(leftovers[k + 1]):  # join earlier survivors up to max_batch rows
                if sum(r.size for _, r in parts) + part[1].size > max_batch:
                    break
                parts.insert(0, part)
            leftovers[k + 1] = [*leftovers[k + 1][-8:], (h, keep)] if rng.random() < 0.7 else []
            h = runner.merge(parts)
        if sample is not None and every and (i + 1) % every == 0:
            sample(i + 1)
    return done
