"""Stage graphs -> verified, calibrated model directory: a trained checkpoint, or any source.

`write_model_dir` is the one checked sequence: a graph step writes the stage graphs into a
staging directory next to the destination and checks them against their source (torch parity
and FLOPs cross-check for a trained network, the original graph for a retrofit); then the ONNX
checker, the batch-size runs, calibration, the manifest (loaded back with every sha256 matching)
and agreement; only then is the directory moved into place.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import numpy as np
import torch

from elf_core.agreement import Agreement
from elf_core.calibration import DEFAULT_TOLERANCE
from elf_core.flops import cumulative_flops, full_flops
from elf_core.manifest import (
    MODEL_NAME_PATTERN,
    Calibration,
    FileRef,
    Manifest,
    Preprocessing,
    Provenance,
    load_manifest,
    sha256_file,
    write_manifest,
)
from elf_core.provider_choice import Provider
from model_export.agreement_run import measure_agreement
from model_export.build import (
    check_destination,
    move_into_place,
    preprocessing,
    provenance,
    stage_specs,
    staging_dir,
)
from model_export.calibrate_run import SplitProbs, run_calibration, validation_probs
from model_export.graphs import StageGraphs, TorchChecks, TorchGraphs
from model_export.report import (
    CalibrationOutcome,
    exit_specs,
    manifest_calibration,
    write_curve,
    write_plot,
)
from model_export.runtime import normalize, providers_for
from model_export.splits import CONFIG_FILE
from model_export.verify import check_batch_sizes, check_full_graph, check_graph
from training.checkpoint import load_checkpoint, load_model, load_train_config
from training.data import DataSplits, build_splits
from training.networks import MultiExitNet

log = logging.getLogger(__name__)
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


@dataclass(frozen=True)
class ExportConfig:
    out: Path
    tolerance: float = DEFAULT_TOLERANCE
    name: str | None = None  # default: the name of the out directory
    version: str = "1"
    device: str = "cpu"  # ONNX Runtime device for calibration (parity always runs on CPU)
    batch_size: int = 256
    parity_images: int = 256
    progress: bool = True
    command: str | None = None  # recorded in the manifest's provenance
    # Tail protection (see elf_core.calibration.calibrate); None: plain calibration.
    tail_tolerance: float | None = None
    protect_classes: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ExportResult(Generic[R]):
    model_dir: Path
    manifest: Manifest
    checks: R  # what the graph step checked against its source
    calibration: CalibrationOutcome | None  # None when the calibration step used no split


@dataclass(frozen=True)
class ModelCard:
    """What the manifest says about a model besides its graphs and calibration."""

    class_names: list[str]
    preprocessing: Preprocessing
    provenance: Provenance


@dataclass(frozen=True)
class Calibrated:
    """What a calibration step hands back to write_model_dir."""

    thresholds: Sequence[float]  # K-1 (auxiliary exits) or K, the last 0
    calibration: Calibration | None  # the manifest's calibration entry
    outcome: CalibrationOutcome | None = None  # validation/test numbers, when a split was used


class CalibrationStep(Protocol):
    """Chooses the thresholds of verified stage graphs (per_stage: per-image (body, exit head)
    FLOPs); may write files into `model_dir` (the staging directory, moved with the rest)."""

    def __call__(
        self, stage_paths: Sequence[Path], per_stage: Sequence[tuple[int, int]], model_dir: Path
    ) -> Calibrated: ...


class GraphStep(Protocol[R_co]):
    """Writes stage_0..K-1.onnx and full.onnx (the backbone alone: input -> the final exit's
    logits) into a model directory, then checks them against the source they came from (raising
    VerificationError) and reports what it checked."""

    def write(self, model_dir: Path) -> StageGraphs: ...

    def verify(self, model_dir: Path, graphs: StageGraphs) -> R_co: ...


def validation_steps(
    splits: DataSplits, cfg: ExportConfig, name: str, providers: Sequence[Provider]
) -> tuple[CalibrationStep, Callable[[Path], Agreement]]:
    """The default steps: thresholds chosen on the validation split (tail-protected with
    cfg.tail_tolerance), then measured on test, writing calibration.json and calibration.png;
    and, after the manifest, agreement.json on the validation split. The stage graphs run over
    validation once: the agreement step reuses the calibration step's probabilities for the
    directory calibrated (the staging directory), and runs the graphs itself for any other."""
    seen: dict[Path, SplitProbs] = {}

    def calibrate(
        stage_paths: Sequence[Path], per_stage: Sequence[tuple[int, int]], model_dir: Path
    ) -> Calibrated:
        val = validation_probs(
            stage_paths, splits, providers, batch_size=cfg.batch_size, progress=cfg.progress
        )
        seen[model_dir.resolve()] = val
        outcome = run_calibration(
            stage_paths, splits, cumulative_flops(per_stage), full_flops(per_stage),
            cfg.tolerance, providers=providers, batch_size=cfg.batch_size,
            progress=cfg.progress, tail_tolerance=cfg.tail_tolerance,
            protect_classes=cfg.protect_classes, val=val,
        )  # fmt: skip
        write_curve(outcome, model_dir)
        write_plot(outcome, model_dir, name)
        return Calibrated(outcome.val.chosen.thresholds, manifest_calibration(outcome), outcome)

    def agreement(model_dir: Path) -> Agreement:
        return measure_agreement(
            model_dir, splits, cfg.device, cfg.batch_size, cfg.progress,
            val=seen.get(model_dir.resolve()),
        )  # fmt: skip

    return calibrate, agreement


def export_checkpoint(checkpoint: Path, cfg: ExportConfig) -> ExportResult[TorchChecks]:
    """Rebuild model and data splits from the checkpoint's config, then export_model."""
    state = load_checkpoint(checkpoint)
    net, config = load_model(checkpoint)
    splits = build_splits(load_train_config(config).data)
    command = cfg.command
    # elf-train records its command line in the checkpoint (and in its config since then).
    train_command = state.get("command") or config.get("command")
    if train_command:
        command = f"train: {train_command}; export: {cfg.command}"
    card = ModelCard(
        class_names=list(splits.class_names),
        preprocessing=preprocessing(splits),
        provenance=provenance(
            splits,
            method=str(config["loss"]["method"]),
            loss=str(config["loss"]["base"]),
            architecture=str(config["model"]["arch"]),
            epochs=int(state.get("epoch", config.get("epochs", 0))),
            command=command,
            commit=str(state["commit"]) if state.get("commit") else None,
        ),
    )
    # Resolved before the slow part: a missing CUDA provider fails at once.
    providers = providers_for(cfg.device)
    n = min(cfg.parity_images, len(splits.val))
    x = normalize(splits.val.batch(torch.arange(n)).numpy(), splits.mean, splits.std)
    calibrate, agreement = validation_steps(splits, cfg, model_name(cfg), providers)
    return export_model(
        net,
        card,
        cfg,
        parity_inputs=x,
        calibrate=calibrate,
        extra_files={CONFIG_FILE: json.dumps(config, indent=1) + "\n"},
        after_manifest=agreement,
    )


def model_name(cfg: ExportConfig) -> str:
    return cfg.name or cfg.out.resolve().name


def check_export_config(cfg: ExportConfig) -> str:
    """What would only fail when the manifest is written, checked before the slow part; the
    model's name."""
    name = model_name(cfg)
    if not re.fullmatch(MODEL_NAME_PATTERN, name):
        raise ValueError(f"model name {name!r}: letters, digits, '.', '_', '-' only")
    if not 0.0 <= cfg.tolerance <= 1.0:
        raise ValueError(f"tolerance must be in [0, 1], got {cfg.tolerance}")
    check_destination(cfg.out.resolve())
    return name


def export_model(
    net: MultiExitNet,
    card: ModelCard,
    cfg: ExportConfig,
    *,
    parity_inputs: np.ndarray,
    calibrate: CalibrationStep,
    relative_parity: bool = False,
    extra_files: dict[str, str] | None = None,
    after_manifest: Callable[[Path], object] | None = None,
) -> ExportResult[TorchChecks]:
    """Export a trained multi-exit network into a model directory that `elf-serve` serves.

    One ONNX graph per stage and `full.onnx` (the backbone alone), checked (ONNX checker, batch
    sizes, parity with torch, FLOPs counted twice), calibrated on validation, then the manifest;
    everything is built in a staging directory and moved to `cfg.out` only after every check
    passed.

    Args:
        net: The trained network (moved to the CPU, eval mode).
        card: Name, version, classes, preprocessing and provenance for the manifest.
        cfg: Destination, tolerance and the other export options.
        parity_inputs: Normalised validation images `[N, C, H, W]` for the parity check.
        calibrate: The calibration step (thresholds on the validation split).
        relative_parity: Compare logits relative to each exit's logit range.
        extra_files: More files (name -> text) to write into the directory.
        after_manifest: Called with the staging directory once the manifest is written.

    Returns:
        The model directory, its manifest and the checks' results.
    """
    pre = card.preprocessing
    step = TorchGraphs(
        net.cpu().eval(), (pre.channels, pre.height, pre.width), parity_inputs, relative_parity
    )
    return write_model_dir(
        step,
        card,
        cfg,
        calibrate=calibrate,
        extra_files=extra_files,
        after_manifest=after_manifest,
    )


def write_model_dir(
    graphs_step: GraphStep[R],
    card: ModelCard,
    cfg: ExportConfig,
    *,
    calibrate: CalibrationStep,
    extra_files: dict[str, str] | None = None,
    after_manifest: Callable[[Path], object] | None = None,
) -> ExportResult[R]:
    """Write cfg.out: the step's graphs, checked (the step's own checks, ONNX checker, batch
    sizes), then calibrated by `calibrate`, with the manifest written and loaded back (then
    `after_manifest` on the staged directory), all in a staging directory that replaces cfg.out
    only when everything passed."""
    out = cfg.out.resolve()
    name = check_export_config(cfg)
    pre = card.preprocessing
    shape = (pre.channels, pre.height, pre.width)
    tmp = staging_dir(out)
    try:
        graphs = graphs_step.write(tmp)
        stage_paths = [tmp / g.file for g in graphs.stages]
        specs = [check_graph(p) for p in stage_paths]
        check_full_graph(tmp / graphs.full.file)
        check_batch_sizes(stage_paths, tmp / graphs.full.file, shape, len(card.class_names))
        checks = graphs_step.verify(tmp, graphs)
        cal = calibrate(stage_paths, graphs.per_stage, tmp)
        for file, text in (extra_files or {}).items():
            (tmp / file).write_text(text, encoding="utf-8")
        manifest = Manifest(
            name=name,
            version=cfg.version,
            class_names=card.class_names,
            preprocessing=pre,
            stages=stage_specs(tmp, [g.file for g in graphs.stages], specs, graphs.per_stage),
            exits=exit_specs(cal.thresholds, cumulative_flops(graphs.per_stage)),
            full_model=FileRef(file=graphs.full.file, sha256=sha256_file(tmp / graphs.full.file)),
            flops_full=full_flops(graphs.per_stage),
            calibration=cal.calibration,
            provenance=card.provenance,
        )
        write_manifest(manifest, tmp)
        load_manifest(tmp)  # validates and checks every sha256 as the server will
        if after_manifest is not None:  # e.g. agreement.json, which reads the manifest
            after_manifest(tmp)
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("model directory written: %s", out)
    return ExportResult(out, manifest, checks, cal.outcome)
