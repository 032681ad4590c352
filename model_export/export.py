"""Checkpoint -> verified, calibrated model directory; and recalibration of an existing one.

Everything is written into a staging directory next to the destination and moved into place
only after the checker, the batch-size runs, torch parity, the FLOPs cross-check and calibration
have passed, and the written manifest loads back with every sha256 matching.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from elf_core.flops import cumulative_flops, full_flops
from elf_core.manifest import (
    MANIFEST_FILE,
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
from elf_core.providers import Provider
from model_export.build import (
    check_destination,
    move_into_place,
    preprocessing,
    provenance,
    stage_specs,
    staging_dir,
)
from model_export.calibrate_run import run_calibration
from model_export.graphs import export_graphs
from model_export.report import (
    CalibrationOutcome,
    exit_specs,
    manifest_calibration,
    write_curve,
    write_plot,
)
from model_export.runtime import normalize, providers_for
from model_export.verify import (
    FlopsReport,
    ParityReport,
    check_batch_sizes,
    check_flops,
    check_graph,
    check_parity,
)
from training.checkpoint import load_checkpoint, load_model, load_train_config
from training.data import DataSplits, build_splits
from training.networks import MultiExitNet

CONFIG_FILE = "config.json"  # the checkpoint's training config: rebuilds the data splits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportConfig:
    out: Path
    tolerance: float = 0.005
    name: str | None = None  # default: the name of the out directory
    version: str = "1"
    device: str = "cpu"  # ONNX Runtime device for calibration (parity always runs on CPU)
    batch_size: int = 256
    parity_images: int = 256
    progress: bool = True
    command: str | None = None  # recorded in the manifest's provenance


@dataclass(frozen=True)
class ExportResult:
    model_dir: Path
    manifest: Manifest
    parity: ParityReport
    flops: FlopsReport
    calibration: CalibrationOutcome | None  # None when the calibration step used no split


@dataclass(frozen=True)
class ModelCard:
    """What the manifest says about a model besides its graphs and calibration."""

    class_names: list[str]
    preprocessing: Preprocessing
    provenance: Provenance


@dataclass(frozen=True)
class Calibrated:
    """What a calibration step hands back to export_model."""

    thresholds: Sequence[float]  # K-1 (auxiliary exits) or K, the last 0
    calibration: Calibration | None  # the manifest's calibration entry
    outcome: CalibrationOutcome | None = None  # validation/test numbers, when a split was used


class CalibrationStep(Protocol):
    """Chooses the thresholds of verified stage graphs; may write files into `model_dir` (the
    staging directory, moved into place with the rest)."""

    def __call__(
        self, stage_paths: Sequence[Path], flops: FlopsReport, model_dir: Path
    ) -> Calibrated: ...


def validation_calibration(
    splits: DataSplits, cfg: ExportConfig, name: str, providers: Sequence[Provider]
) -> CalibrationStep:
    """The default step: thresholds chosen on the validation split, then measured on test;
    writes calibration.json and calibration.png."""

    def step(stage_paths: Sequence[Path], flops: FlopsReport, model_dir: Path) -> Calibrated:
        outcome = run_calibration(
            stage_paths,
            splits,
            cumulative_flops(flops.per_stage),
            full_flops(flops.per_stage),
            cfg.tolerance,
            providers=providers,
            batch_size=cfg.batch_size,
            progress=cfg.progress,
        )
        write_curve(outcome, model_dir)
        write_plot(outcome, model_dir, name)
        return Calibrated(outcome.val.chosen.thresholds, manifest_calibration(outcome), outcome)

    return step


def export_checkpoint(checkpoint: Path, cfg: ExportConfig) -> ExportResult:
    """Rebuild model and data splits from the checkpoint's config, then export_model."""
    state = load_checkpoint(checkpoint)
    net, config = load_model(checkpoint)
    splits = build_splits(load_train_config(config).data)
    command = cfg.command
    if state.get("command"):
        command = f"train: {state['command']}; export: {cfg.command}"
    epochs = int(state.get("epoch", config.get("epochs", 0)))
    commit = str(state["commit"]) if state.get("commit") else None
    card = ModelCard(
        class_names=list(splits.class_names),
        preprocessing=preprocessing(splits),
        provenance=provenance(splits, config, epochs, command, commit),
    )
    # Resolved before the slow part: a missing CUDA provider fails at once.
    providers = providers_for(cfg.device)
    n = min(cfg.parity_images, len(splits.val))
    x = normalize(splits.val.batch(torch.arange(n)).numpy(), splits.mean, splits.std)
    step = validation_calibration(splits, cfg, model_name(cfg), providers)
    extra = {CONFIG_FILE: json.dumps(config, indent=1) + "\n"}
    return export_model(net, card, cfg, parity_inputs=x, calibrate=step, extra_files=extra)


def model_name(cfg: ExportConfig) -> str:
    return cfg.name or cfg.out.resolve().name


def export_model(
    net: MultiExitNet,
    card: ModelCard,
    cfg: ExportConfig,
    *,
    parity_inputs: np.ndarray,
    calibrate: CalibrationStep,
    relative_parity: bool = False,
    extra_files: dict[str, str] | None = None,
) -> ExportResult:
    """Export `net` into cfg.out: stage graphs and full.onnx, checked (ONNX checker, batch sizes,
    parity with torch on `parity_inputs`, normalized [N, C, H, W], FLOPs cross-check), then
    calibrated by `calibrate`, with the manifest written and loaded back, all in a staging
    directory that replaces cfg.out only when everything passed."""
    out = cfg.out.resolve()
    name = model_name(cfg)
    # Fail before the slow part on what would only fail when the manifest is written.
    if not re.fullmatch(MODEL_NAME_PATTERN, name):
        raise ValueError(f"model name {name!r}: letters, digits, '.', '_', '-' only")
    if not 0.0 <= cfg.tolerance <= 1.0:
        raise ValueError(f"tolerance must be in [0, 1], got {cfg.tolerance}")
    check_destination(out)
    net = net.cpu().eval()
    pre = card.preprocessing
    shape = (pre.channels, pre.height, pre.width)
    tmp = staging_dir(out)
    try:
        stages, full = export_graphs(net, shape, tmp)
        stage_paths = [tmp / g.file for g in stages]
        specs = [check_graph(p) for p in stage_paths]
        check_graph(tmp / full.file)
        check_batch_sizes(stage_paths, tmp / full.file, shape, net.num_classes)
        parity = check_parity(
            net, stage_paths, tmp / full.file, parity_inputs, relative=relative_parity
        )
        flops = check_flops(net, shape, stage_paths, tmp / full.file)
        cal = calibrate(stage_paths, flops, tmp)
        for file, text in (extra_files or {}).items():
            (tmp / file).write_text(text, encoding="utf-8")
        manifest = Manifest(
            name=name,
            version=cfg.version,
            class_names=card.class_names,
            preprocessing=pre,
            stages=stage_specs(tmp, [g.file for g in stages], specs, flops.per_stage),
            exits=exit_specs(cal.thresholds, cumulative_flops(flops.per_stage)),
            full_model=FileRef(file=full.file, sha256=sha256_file(tmp / full.file)),
            flops_full=full_flops(flops.per_stage),
            calibration=cal.calibration,
            provenance=card.provenance,
        )
        write_manifest(manifest, tmp)
        load_manifest(tmp)  # validates and checks every sha256 as the server will
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("model directory written: %s", out)
    return ExportResult(out, manifest, parity, flops, cal.outcome)


def recalibrate(
    model_dir: Path,
    tolerance: float,
    device: str = "cpu",
    batch_size: int = 256,
    progress: bool = True,
) -> tuple[Manifest, CalibrationOutcome]:
    """Choose new thresholds for an existing model directory (same graphs, same validation split)
    and rewrite calibration.json/.png and the manifest's thresholds and calibration."""
    manifest = load_manifest(model_dir)
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing; needed to rebuild the validation split")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    splits = build_splits(load_train_config(config).data)
    outcome = run_calibration(
        [model_dir / s.file for s in manifest.stages],
        splits,
        [e.cumulative_flops for e in manifest.exits],
        manifest.flops_full,
        tolerance,
        providers=providers_for(device),
        batch_size=batch_size,
        progress=progress,
    )
    exits = exit_specs(outcome.val.chosen.thresholds, outcome.cumulative_flops)
    updated = Manifest.model_validate(
        {
            **manifest.model_dump(),
            "exits": [e.model_dump() for e in exits],
            "calibration": manifest_calibration(outcome).model_dump(),
        }
    )
    write_curve(outcome, model_dir)
    write_plot(outcome, model_dir, manifest.name)
    # Replace the manifest in one rename: a reader sees the old one or the new one, never half.
    tmp = model_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(updated.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, model_dir / MANIFEST_FILE)
    return updated, outcome
