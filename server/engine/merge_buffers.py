"""Host buffers that merged CPU batches are written into, reused once nobody holds them.

A merged batch of large feature maps written into freshly allocated memory pays a page fault on
the first touch of every page, at every merge; a buffer kept from an earlier merge of the same
feature shape has its pages mapped already. The rule: a buffer is handed out again only when
nothing refers to the batch last written into it. Its memory is owned by one numpy array (the
"owner"); the merged OrtValue (`PooledValue`) and every numpy view of it (`PooledValue.numpy()`
returns views of the owner) hold a reference to the owner, so the owner's reference count tells
whether anyone still holds the previous batch. ONNX Runtime never keeps an input after a run; a
stage output that shares an input's memory would, so `keep_if_shared` pins such a buffer for good
and stops reuse.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

ALIGN = 64  # bytes: where ONNX Runtime's CPU allocator starts a tensor (the same for the stages)


class PooledValue(ort.OrtValue):
    """An OrtValue over a pool buffer: its numpy views keep the buffer from being reused."""

    def numpy(self) -> np.ndarray:
        # ort.OrtValue.numpy() would return a view that refers to the C++ value, not the owner.
        view: np.ndarray = self._numpy_obj[...]
        return view


@dataclass(eq=False)
class _Buffer:
    owner: np.ndarray  # uint8: owns the memory; whatever is lent out refers to it
    rows: int  # capacity, in rows of the feature shape
    idle_refs: int = 0  # the owner's reference count while nothing is lent out

    def idle(self) -> bool:
        return _refs(self) <= self.idle_refs


def _refs(buf: _Buffer) -> int:
    return sys.getrefcount(buf.owner)


class MergeBuffers:
    """Up to `per_shape` reusable buffers per feature shape (trailing dims and dtype), each
    sized for the most rows merged at that shape so far; 0 turns reuse off (fresh ONNX Runtime
    memory per merge)."""

    def __init__(self, per_shape: int) -> None:
        self.per_shape = per_shape
        self._buffers: dict[tuple[tuple[int, ...], str], list[_Buffer]] = {}
        self._pinned: list[_Buffer] = []  # shared with a stage output: kept, never reused
        self._lock = threading.Lock()  # a runner may be shared by threads

    def buffers(self, trailing: Sequence[int], dtype: np.dtype) -> int:
        """How many buffers the pool holds for this feature shape (for tests and logs)."""
        return len(self._buffers.get((tuple(trailing), dtype.str), []))

    def take(self, shape: Sequence[int], dtype: np.dtype) -> ort.OrtValue:
        """An uninitialised [shape] tensor on the CPU: a pool buffer's first rows when one is
        idle (or may be made), else fresh memory owned by ONNX Runtime."""
        rows, trailing = int(shape[0]), tuple(int(d) for d in shape[1:])
        if self.per_shape <= 0 or rows == 0:
            return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype.type)
        row_bytes = int(np.prod(trailing, dtype=np.int64)) * dtype.itemsize
        with self._lock:  # `view` refers to the owner before another thread can pick it
            buf = self._pick((trailing, dtype.str), rows, row_bytes)
            if buf is None:  # every buffer of this shape is still held
                return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype.type)
            start = -buf.owner.ctypes.data % ALIGN
            view = buf.owner[start : start + rows * row_bytes].view(dtype).reshape(shape)
        return PooledValue(ort.OrtValue.ortvalue_from_numpy(view)._ortvalue, view)

    def _pick(self, key: tuple[tuple[int, ...], str], rows: int, row_bytes: int) -> _Buffer | None:
        bufs = self._buffers.setdefault(key, [])
        idle = [b for b in bufs if b.idle()]
        fits = [b for b in idle if b.rows >= rows]
        if fits:
            return min(fits, key=lambda b: b.rows)
        if len(bufs) >= self.per_shape:
            if not idle:
                return None
            bufs.remove(min(idle, key=lambda b: b.rows))  # too small: replaced by a larger one
        capacity = max([rows, *(b.rows for b in bufs)])
        buf = _Buffer(np.empty(capacity * row_bytes + ALIGN, np.uint8), capacity)
        buf.idle_refs = _refs(buf)
        bufs.append(buf)
        return buf

    def keep_if_shared(self, x: ort.OrtValue, outputs: Sequence[ort.OrtValue]) -> None:
        """After a run on x: if an output shares x's pool memory, it lives on in that output,
        where no reference count sees it; pin the buffer for good and stop reusing buffers."""
        if not isinstance(x, PooledValue) or not any(_overlap(x, o) for o in outputs):
            return
        owner = x._numpy_obj.base
        with self._lock:
            for bufs in self._buffers.values():
                self._pinned += [b for b in bufs if b.owner is owner]
                bufs[:] = [b for b in bufs if b.owner is not owner]
            self.per_shape = 0
        log.warning("a stage output shares its input's memory: merge buffers are not reused")


# Bytes per element by ONNX type; anything else counts as 8 (a wider span only pins sooner).
_ITEMSIZE = {"tensor(float16)": 2, "tensor(float)": 4, "tensor(bfloat16)": 2}


def _span(v: ort.OrtValue) -> tuple[int, int]:
    start = int(v.data_ptr())
    size = _ITEMSIZE.get(v.data_type(), 8)
    return start, start + int(np.prod(v.shape(), dtype=np.int64)) * size


def _overlap(a: ort.OrtValue, b: ort.OrtValue) -> bool:
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1
