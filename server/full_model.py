"""`exit=final` through full.onnx: one ONNX Runtime call per batch, the backbone's FLOPs.

A model directory whose full.onnx is the backbone alone (one input, one output: the final exit's
logits [batch, classes]) answers `exit=final` requests through a second Batcher of its own over a
one-stage OnnxStageRunner on that graph: batched like any other request (the same batch cap,
queue delay and queue limit), one session run per batch, and no auxiliary exit head runs. The
answers are the final exit's: exit index K-1, FLOPs executed `flops_full`.

A directory without full.onnx, or with an older one that outputs every exit's logits, answers
`exit=final` through the stage chain with every exit's threshold at infinity (each exit head runs
on the way), as before; start-up logs which path a model uses.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from elf_core.manifest import ExitSpec, Manifest, StageSpec, TensorSpec
from server.batching.batcher import Batcher, RowResult
from server.engine.runner import OnnxStageRunner
from server.engine.sessions import load_stage_sessions
from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger(__name__)

STAGE_LABEL = "full"  # the `stage` label of this path's batch-size and duration metrics
_THRESHOLDS = np.zeros(1)  # one exit, which always answers


@dataclass
class FullModelPath:
    """The `exit=final` path of one model: full.onnx behind its own batcher."""

    batcher: Batcher
    exit_index: int  # the final exit, K-1
    flops: int  # per image: the manifest's flops_full

    async def infer(self, xs: Sequence[np.ndarray], timeout_s: float) -> list[RowResult]:
        """Batcher.infer through full.onnx, each answer reported at the final exit."""
        results = await self.batcher.infer(xs, [_THRESHOLDS] * len(xs), timeout_s)
        return [dataclasses.replace(r, exit_index=self.exit_index) for r in results]

    def start(self) -> None:
        self.batcher.start()

    def stop(self, timeout_s: float | None = None) -> None:
        self.batcher.stop(timeout_s)


def backbone_manifest(manifest: Manifest, logits: TensorSpec) -> Manifest:
    """`manifest` as a one-stage model: full.onnx its only stage, the final exit its only exit."""
    assert manifest.full_model is not None
    last = manifest.stages[-1]
    stage = StageSpec(
        index=0,
        file=manifest.full_model.file,
        sha256=manifest.full_model.sha256,
        input=manifest.stages[0].input,
        features=None,
        logits=logits,
        flops_body=manifest.flops_full - last.flops_exit,
        flops_exit=last.flops_exit,
    )
    exit_ = ExitSpec(index=0, stage=0, threshold=0.0, cumulative_flops=manifest.flops_full)
    return Manifest.model_validate(
        {**manifest.model_dump(), "stages": [stage.model_dump()], "exits": [exit_.model_dump()]}
    )


def _unusable(manifest: Manifest, inputs: list[str], outputs: list[tuple[str, list]]) -> str:
    """Why full.onnx cannot answer for the final exit ("" when it can)."""
    want_input = manifest.stages[0].input.name
    if inputs != [want_input]:
        return f"its inputs are {inputs}, stage 0's is {want_input!r}"
    if len(outputs) != 1:
        return f"it has {len(outputs)} outputs, not one (the backbone alone)"
    shape = outputs[0][1]
    if len(shape) != 2 or shape[1] != len(manifest.class_names):
        return f"its output has shape {shape}, not [batch, {len(manifest.class_names)}]"
    return ""


def load_full_path(
    model_dir: Path,
    manifest: Manifest,
    settings: Settings,
    metrics: Metrics,
    *,
    max_batch_size: int,
    stage_batcher: Batcher,
) -> FullModelPath | None:
    """full.onnx's session, runner (warmed up like the stages) and batcher; None when the
    directory has no full.onnx or one that is not the backbone alone (logged)."""
    if manifest.full_model is None:
        log.info("%s: no full.onnx; exit=final runs the stage graphs", manifest.name)
        return None
    provisional = backbone_manifest(manifest, manifest.stages[-1].logits)
    sessions = load_stage_sessions(provisional, model_dir, settings)
    sess = sessions.sessions[0]
    outputs = [(o.name, list(o.shape)) for o in sess.get_outputs()]
    why = _unusable(manifest, [i.name for i in sess.get_inputs()], outputs)
    if why:
        log.warning(
            "%s: %s is not used for exit=final (%s); exit=final runs the stage graphs",
            manifest.name,
            manifest.full_model.file,
            why,
        )
        return None
    logits = manifest.stages[-1].logits.model_copy(update={"name": outputs[0][0]})
    runner = OnnxStageRunner(backbone_manifest(manifest, logits), sessions, max_batch_size)
    b = settings.max_batch_size
    runner.warm_up(list(range(1, b + 1)) if settings.warmup_all_batch_sizes else sorted({1, b}))
    batcher = Batcher(
        runner,
        max_batch_size=max_batch_size,
        max_queue_delay_s=settings.max_queue_delay_ms / 1000.0,
        max_queue_size=settings.max_queue_size,
        model=manifest.name,
        version=manifest.version,
        metrics=metrics,
        scheduling=settings.scheduling,
        stage_labels=[STAGE_LABEL],
    )
    batcher.depth_peers.append(stage_batcher)
    stage_batcher.depth_peers.append(batcher)
    log.info("%s: exit=final runs %s in one call", manifest.name, manifest.full_model.file)
    return FullModelPath(batcher, manifest.num_exits - 1, manifest.flops_full)
