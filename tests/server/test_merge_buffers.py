"""Host merge buffers (server/engine/merge_buffers.py) on the tiny model with real ONNX Runtime:
the same bytes as fresh memory, and a buffer never rewritten while its batch is still held."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from elf_core.manifest import load_manifest
from server.engine.merge_buffers import MergeBuffers, PooledValue
from server.engine.runner import OnnxStageRunner
from server.engine.sessions import load_stage_sessions
from tests.server.conftest import make_settings
from tests.server.tiny_model import normalise

F32 = np.dtype(np.float32)


@pytest.fixture(scope="module")
def runners(tiny_model_dir: Path) -> tuple[OnnxStageRunner, OnnxStageRunner]:
    """(reusing, fresh): the same sessions, merge buffers on (the default) and off."""
    manifest = load_manifest(tiny_model_dir)
    settings = make_settings(tiny_model_dir)
    stages = load_stage_sessions(manifest, tiny_model_dir, settings)
    reuse = OnnxStageRunner(manifest, stages, settings.max_batch_size)
    fresh = OnnxStageRunner(manifest, stages, settings.max_batch_size, merge_buffers=0)
    return reuse, fresh


def survivors(rng: np.random.Generator, b: int) -> np.ndarray:
    """A sorted, non-empty random subset of range(b), sometimes all of it."""
    m = b if rng.random() < 0.2 else int(rng.integers(1, b + 1))
    return np.sort(rng.choice(b, m, replace=False)).astype(np.int64)


def test_reuse_gives_fresh_memory_bytes_and_never_rewrites_a_held_batch(
    runners: tuple[OnnxStageRunner, OnnxStageRunner], pixels: np.ndarray
) -> None:
    """Many batches through every stage with varying survivor sets, merged from 1-3 parts: the
    reusing runner's merged batches, features and logits equal the fresh runner's bit for bit,
    while some merged batches (or only numpy views of them) are held across later merges."""
    reuse, fresh = runners
    rng = np.random.default_rng(0)
    images = normalise(pixels)
    held: list[tuple[object, np.ndarray]] = []  # (a merged batch or a view of one, its bytes)
    pooled = reused = 0
    seen: set[int] = set()
    for _ in range(40):
        parts: list[list[tuple[ort.OrtValue, np.ndarray]]] = [[], []]  # per runner
        for _ in range(int(rng.integers(1, 4))):
            x = images[rng.choice(len(images), int(rng.integers(1, 9)), replace=False)]
            rows = survivors(rng, len(x))
            for i, r in enumerate((reuse, fresh)):
                h, _ = r.run(0, r.to_device(x))
                assert h is not None
                parts[i].append((h, rows))
        for k in (1, 2):
            merged = [r.merge(p) for r, p in zip((reuse, fresh), parts, strict=True)]
            np.testing.assert_array_equal(merged[0].numpy(), merged[1].numpy())
            if isinstance(merged[0], PooledValue):
                pooled += 1
                reused += merged[0].data_ptr() in seen
                seen.add(merged[0].data_ptr())
            out = [r.run(k, m) for r, m in zip((reuse, fresh), merged, strict=True)]
            np.testing.assert_array_equal(out[0][1], out[1][1])  # logits
            if rng.random() < 0.3:  # hold the batch, or only a view of it, for a while
                keep = merged[0] if rng.random() < 0.5 else merged[0].numpy()[rng.integers(0, 2) :]
                held.append((keep, np.array(_bytes(keep), copy=True)))
            if held and rng.random() < 0.3:
                held.pop(int(rng.integers(0, len(held))))
            for value, expected in held:
                np.testing.assert_array_equal(_bytes(value), expected)
            if k == 2:
                break
            features = out[0][0], out[1][0]
            assert features[0] is not None and features[1] is not None
            np.testing.assert_array_equal(features[0].numpy(), features[1].numpy())
            rows = survivors(rng, features[0].shape()[0])
            parts = [[(f, rows)] for f in features]
    assert pooled >= 30 and reused >= 20  # reuse did happen, not fresh memory throughout
    for trailing in ((4, 28, 28), (8, 14, 14)):
        assert reuse.merge_buffers.buffers(trailing, F32) <= 2
        assert fresh.merge_buffers.buffers(trailing, F32) == 0


def _bytes(value: object) -> np.ndarray:
    return value.numpy() if isinstance(value, ort.OrtValue) else np.asarray(value)


def test_a_buffer_is_reused_only_after_its_batch_and_views_are_dropped(
    runners: tuple[OnnxStageRunner, OnnxStageRunner], pixels: np.ndarray
) -> None:
    reuse = OnnxStageRunner(runners[0].manifest, runners[0].stages, merge_buffers=2)
    a, _ = reuse.run(0, reuse.to_device(normalise(pixels[:8])))
    assert a is not None
    rows = np.array([0, 2, 4, 6])
    first = reuse.merge([(a, rows)])
    ptr = first.data_ptr()
    reuse.run(1, first)  # the next stage consumed it; the caller still holds it
    view = first.numpy()[1:]
    expected = view.copy()
    del first  # only a view is left: still not reusable
    second = reuse.merge([(a, rows)])
    third = reuse.merge([(a, rows)])  # both buffers held: fresh memory owned by ONNX Runtime
    assert second.data_ptr() != ptr and not isinstance(third, PooledValue)
    np.testing.assert_array_equal(view, expected)
    del view
    gc.collect()
    again = reuse.merge([(a, rows[:3])])  # fewer rows fit the same buffer
    assert isinstance(again, PooledValue) and again.data_ptr() == ptr
    np.testing.assert_array_equal(again.numpy(), a.numpy()[rows[:3]])
    np.testing.assert_array_equal(second.numpy(), a.numpy()[rows])
    assert reuse.merge_buffers.buffers((4, 28, 28), F32) == 2


def test_more_rows_than_any_idle_buffer_holds_replace_the_smallest() -> None:
    pool = MergeBuffers(1)
    small = pool.take([2, 3], F32)
    del small
    big = pool.take([5, 3], F32)  # the idle 2-row buffer is dropped for a 5-row one
    assert isinstance(big, PooledValue) and pool.buffers((3,), F32) == 1
    ptr = big.data_ptr()
    del big
    assert pool.take([4, 3], F32).data_ptr() == ptr
    assert not isinstance(MergeBuffers(0).take([4, 3], F32), PooledValue)


def test_an_output_sharing_a_pooled_input_pins_its_buffer_and_stops_reuse() -> None:
    pool = MergeBuffers(2)
    x = pool.take([4, 3], F32)
    x.numpy()[:] = np.arange(12, dtype=np.float32).reshape(4, 3)
    apart = ort.OrtValue.ortvalue_from_numpy(np.zeros((4, 3), np.float32))
    pool.keep_if_shared(x, [apart])
    assert pool.per_shape == 2  # nothing shared: reuse goes on
    # What an output aliasing x would be: ONNX Runtime memory-sharing, no numpy reference.
    shared = ort.OrtValue(ort.OrtValue.ortvalue_from_numpy(x.numpy()[2:])._ortvalue)
    pool.keep_if_shared(x, [apart, shared])
    assert pool.per_shape == 0 and pool.buffers((3,), F32) == 0
    del x
    gc.collect()
    after = pool.take([4, 3], F32)
    assert not isinstance(after, PooledValue)
    after.numpy()[:] = -1.0
    np.testing.assert_array_equal(shared.numpy(), [[6, 7, 8], [9, 10, 11]])
