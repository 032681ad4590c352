"""Run stage graphs with IOBinding so features stay on the device; only logits reach the host.

The same code runs on CPU (device "cpu") and CUDA (device "cuda"): stage k's features output is
bound to the device, handed to stage k+1 (or to the merge that drops exited rows and joins rows
from several batches) as an OrtValue, and never copied to numpy. On CUDA the merge is a small
Gather/Concat graph; on CPU it is numpy on zero-copy views of the features (it copies only the
kept rows, once, where the graph copies every part whole and then the kept rows), into a host
buffer kept from an earlier merge once nobody holds that merge's batch (merge_buffers.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from elf_core.manifest import Manifest
from server.engine.merge_buffers import MergeBuffers
from server.engine.onnx_bytes import merge_rows_model
from server.engine.sessions import EngineError, StageSessions, session_options

log = logging.getLogger(__name__)

# (features [b, ...] on the device, the rows of it to keep int64 [m]); the batcher queues these
# inside its `Part`s.
FeatureRows = tuple[ort.OrtValue, np.ndarray]


class OnnxStageRunner:
    """Implements the batcher's StageExecutor over ONNX Runtime stage sessions."""

    def __init__(
        self,
        manifest: Manifest,
        stages: StageSessions,
        max_parts: int = 32,
        host_merge: bool | None = None,
        merge_buffers: int = 2,
    ) -> None:
        """max_parts: most parts one merge graph joins (the batcher's max_batch_size); more are
        joined in groups. host_merge: merge CPU features with numpy instead of the merge graph
        (default: on CPU; the graph keeps CUDA features on the device). merge_buffers: host
        merges reuse up to this many buffers per feature shape (0: fresh memory per merge)."""
        self.manifest = manifest
        self.stages = stages
        self.num_stages = len(manifest.stages)
        self.device = stages.device
        self.device_id = stages.device_id
        self._input_dtype = np.dtype(manifest.stages[0].input.dtype)
        self.merge_arity = max(2, max_parts)
        self._merge: dict[tuple[int, str], ort.InferenceSession] = {}
        self._empties: dict[tuple[tuple[int, ...], str], ort.OrtValue] = {}
        self._merge_options = session_options(1, False, stages.requested)
        self.host_merge = self.device == "cpu" if host_merge is None else host_merge
        if self.host_merge and self.device != "cpu":
            raise ValueError(f"host_merge needs CPU features, not {self.device!r} ones")
        self.merge_buffers = MergeBuffers(merge_buffers)
        self._check_graph_names()

    def _check_graph_names(self) -> None:
        for spec, sess in zip(self.manifest.stages, self.stages.sessions, strict=True):
            inputs = [i.name for i in sess.get_inputs()]
            outputs = {o.name for o in sess.get_outputs()}
            wanted = {spec.logits.name} | ({spec.features.name} if spec.features else set())
            if inputs != [spec.input.name] or not wanted <= outputs:
                raise EngineError(
                    f"{spec.file}: graph has inputs {inputs} and outputs {sorted(outputs)}; "
                    f"the manifest says input {spec.input.name!r}, outputs {sorted(wanted)}"
                )

    def to_device(self, x: np.ndarray) -> ort.OrtValue:
        """[b, C, H, W] float32 host batch -> an OrtValue on the device, in the model's dtype."""
        x = np.ascontiguousarray(x, dtype=self._input_dtype)
        return ort.OrtValue.ortvalue_from_numpy(x, self.device, self.device_id)

    def run(self, k: int, x: ort.OrtValue) -> tuple[ort.OrtValue | None, np.ndarray]:
        """Stage k on x -> (features on the device or None for the last stage, logits [b, C])."""
        spec = self.manifest.stages[k]
        sess = self.stages.sessions[k]
        binding = sess.io_binding()
        binding.bind_ortvalue_input(spec.input.name, x)
        if spec.features is not None:
            binding.bind_output(spec.features.name, self.device, self.device_id)
        binding.bind_output(spec.logits.name, "cpu")
        sess.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        self.merge_buffers.keep_if_shared(x, outputs)
        logits = np.asarray(outputs[-1].numpy(), dtype=np.float32)
        return (outputs[0] if spec.features is not None else None), logits

    def merge(self, parts: Sequence[FeatureRows]) -> ort.OrtValue:
        """Keep rows[i] of each part and concatenate, on the device: [sum m_i, ...]."""
        if len(parts) == 1:
            handle, rows = parts[0]
            if rows.size == handle.shape()[0] and np.array_equal(rows, np.arange(rows.size)):
                return handle  # nothing exited and nothing to join: no copy
        return self._run_merge(parts)

    def _run_merge(self, parts: Sequence[FeatureRows]) -> ort.OrtValue:
        sizes = [h.shape()[0] for h, _ in parts]
        for i, ((_, r), b) in enumerate(zip(parts, sizes, strict=True)):
            # On CUDA an out-of-range Gather index yields zeros where the CPU raises: refuse here.
            if r.size and (r.min() < 0 or r.max() >= b):
                raise EngineError(f"merge part {i}: rows {r.tolist()} outside [0, {b})")
        if self.host_merge:
            return self._merge_on_host(parts)
        if len(parts) > self.merge_arity:  # more parts than the graph has inputs: join in groups
            n = self.merge_arity
            joined = [self._run_merge(parts[i : i + n]) for i in range(0, len(parts), n)]
            return self._run_merge([(j, np.arange(j.shape()[0])) for j in joined])
        offsets = np.cumsum([0, *sizes[:-1]])
        rows = np.concatenate([r + o for (_, r), o in zip(parts, offsets, strict=True)])
        first = parts[0][0]
        rank, dtype = len(first.shape()), _dtype_name(first)
        sess = self._merge_session(rank, dtype)
        binding = sess.io_binding()
        for i, (handle, _) in enumerate(parts):
            binding.bind_ortvalue_input(f"x_{i}", handle)
        # Unused inputs get a [0, ...] tensor on the device: Concat skips it, nothing is copied.
        empty = self._empty(first.shape()[1:], dtype)
        for i in range(len(parts), self.merge_arity):
            binding.bind_ortvalue_input(f"x_{i}", empty)
        binding.bind_cpu_input("rows", rows.astype(np.int64))
        binding.bind_output("y", self.device, self.device_id)
        sess.run_with_iobinding(binding)
        return binding.get_outputs()[0]

    def _merge_on_host(self, parts: Sequence[FeatureRows]) -> ort.OrtValue:
        """CPU features: copy only the kept rows, straight into the merged batch [sum m_i, ...].
        `OrtValue.numpy()` of a CPU tensor is a view (no copy); the merge graph would copy every
        part whole (Concat) and then the kept rows (Gather)."""
        first = parts[0][0]
        shape = [sum(r.size for _, r in parts), *first.shape()[1:]]
        # A reused buffer, or fresh memory owned by ONNX Runtime; either way views of the merged
        # batch stay valid, and unchanged, for as long as anyone holds one.
        merged = self.merge_buffers.take(shape, first.numpy().dtype)
        out = merged.numpy()
        at = 0
        for handle, rows in parts:
            np.take(handle.numpy(), rows, axis=0, out=out[at : at + rows.size])
            at += rows.size
        return merged

    def _empty(self, trailing: Sequence[int], dtype: str) -> ort.OrtValue:
        key = (tuple(trailing), dtype)
        value = self._empties.get(key)
        if value is None:
            shape = [0, *trailing]
            value = ort.OrtValue.ortvalue_from_shape_and_type(
                shape, np.dtype(dtype).type, self.device, self.device_id
            )
            self._empties[key] = value
        return value

    def _merge_session(self, rank: int, dtype: str) -> ort.InferenceSession:
        """One merge graph per feature rank and dtype (in practice one), with `merge_arity`
        inputs, on the stages' providers: one CUDA provider instance, arena and stream."""
        key = (rank, dtype)
        sess = self._merge.get(key)
        if sess is None:
            sess = ort.InferenceSession(
                merge_rows_model(self.merge_arity, rank, dtype),
                sess_options=self._merge_options,
                providers=self.stages.requested,
            )
            self.stages.check(f"{self.manifest.name} merge graph", sess)
            self._merge[key] = sess
        return sess

    def warm_up(self, batch_sizes: Sequence[int]) -> None:
        """Run every stage at every batch size, and the merge graph of each stage's features."""
        pre = self.manifest.preprocessing
        first_features: list[ort.OrtValue] = []
        for b in batch_sizes:
            x = self.to_device(np.zeros((b, pre.channels, pre.height, pre.width), np.float32))
            h: ort.OrtValue | None = x
            for k in range(self.num_stages):
                assert h is not None
                h, _ = self.run(k, h)
                if b == min(batch_sizes) and h is not None and not self.host_merge:
                    first_features.append(h)  # the merge graph's warm-up below
        one_row = np.zeros(1, dtype=np.int64)  # the merge graph per feature shape (numpy: none)
        for feats in first_features:
            for n in sorted({1, self.merge_arity}):
                self._run_merge([(feats, one_row)] * n)
        log.info(
            "%s: warmed %d stages at batch sizes %s, %d merge graph(s) of %d inputs",
            self.manifest.name,
            self.num_stages,
            _ranges(batch_sizes),
            len(self._merge),
            self.merge_arity,
        )


def _dtype_name(value: ort.OrtValue) -> str:
    return "float16" if value.data_type() == "tensor(float16)" else "float32"


def _ranges(sizes: Sequence[int]) -> str:
    if list(sizes) == list(range(1, max(sizes) + 1)):
        return f"1..{max(sizes)}"
    return ",".join(map(str, sizes))
