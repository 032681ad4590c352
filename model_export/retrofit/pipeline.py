"""retrofit(): an ONNX classifier + data -> a verified, calibrated model directory with early exits.

Order: load and check the model, build the data splits (the project's loaders), choose the cuts,
compute the cut features once (ONNX Runtime), train the heads (torch); then the export's one
checked sequence (model_export.export.write_model_dir) with this module's graph step: the stage
graphs are the original graph's segments joined to the exported heads, checked against the
original graph on real images (chained stages) and against the torch heads, with FLOPs counted on
the graphs; calibration on the validation split (tail protection as for a trained model),
manifest, agreement.json and retrofit.json, and only then the move into place.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from elf_core.manifest import Manifest, Provenance
from model_export.build import preprocessing, provenance
from model_export.export import (
    Calibrated,
    CalibrationStep,
    ExportConfig,
    ModelCard,
    check_export_config,
    model_name,
    validation_steps,
    write_model_dir,
)
from model_export.graphs import StageGraphs
from model_export.report import CalibrationOutcome
from model_export.retrofit.assemble import build_stage_graphs
from model_export.retrofit.checks import ParityCheck, check_flops_partition, check_stage_parity
from model_export.retrofit.cuts import Classifier, Cut, RetrofitError, choose_cuts, load_classifier
from model_export.retrofit.features import compute_features
from model_export.retrofit.heads import ExitHead, HeadConfig, train_heads
from model_export.runtime import providers_for
from model_export.splits import RETROFIT_FILE
from training.config import to_dict
from training.data import DataConfig, DataSplits, build_splits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrofitConfig:
    onnx: Path
    data: DataConfig
    export: ExportConfig  # destination, name, tolerances (tail protection too), device, ...
    cuts: tuple[str, ...] = ()  # tensor names; empty = automatic
    num_exits: int = 3  # early exits to place automatically (fewer if fewer stage ends exist)
    head: HeadConfig = field(default_factory=HeadConfig)
    channels: int | None = None  # None: the model's input shape
    image_size: tuple[int, int] | None = None  # (height, width); None: the model's input shape
    mean: tuple[float, ...] | None = None  # None: the training split's statistics
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class RetrofitResult:
    model_dir: Path
    manifest: Manifest
    cuts: list[Cut]
    parity: ParityCheck
    calibration: CalibrationOutcome
    seconds: dict[str, float]  # wall time per phase


@dataclass(frozen=True)
class RetrofitGraphs:
    """write_model_dir's graph step: segments of the original graph joined to the heads."""

    clf: Classifier
    cuts: Sequence[Cut]
    heads: Sequence[ExitHead]
    splits: DataSplits
    parity_images: int

    def write(self, model_dir: Path) -> StageGraphs:
        return build_stage_graphs(self.clf, self.cuts, self.heads, model_dir)

    def verify(self, model_dir: Path, graphs: StageGraphs) -> ParityCheck:
        paths = [model_dir / g.file for g in graphs.stages]
        parity = check_stage_parity(self.clf, paths, self.heads, self.splits, self.parity_images)
        check_flops_partition(self.clf, graphs.per_stage)
        return parity


def _data_config(cfg: RetrofitConfig, clf: Classifier) -> DataConfig:
    """Folder and list data are decoded at the model's input size and channel count."""
    c, h, w = clf.input_shape
    if cfg.data.dataset not in ("folder", "list"):
        return cfg.data
    if h != w and cfg.data.image_size is None:
        raise RetrofitError(f"{clf.path}: input {h}x{w} is not square; folder data are square")
    return dataclasses.replace(
        cfg.data,
        image_size=cfg.data.image_size or h,
        channels=cfg.data.channels or c,
    )


def load_data(cfg: RetrofitConfig, clf: Classifier) -> DataSplits:
    """The splits, checked against the model, with the preprocessing the model expects."""
    splits = build_splits(_data_config(cfg, clf))
    shape = (splits.channels, splits.height, splits.width)
    if shape != clf.input_shape:
        raise RetrofitError(
            f"{splits.name}: images are {shape} (C, H, W) but {clf.path.name} takes "
            f"{clf.input_shape}"
        )
    if splits.num_classes != clf.num_classes:
        raise RetrofitError(
            f"{splits.name}: {splits.num_classes} classes in the data but {clf.path.name} "
            f"outputs {clf.num_classes}"
        )
    mean = cfg.mean if cfg.mean is not None else splits.mean
    std = cfg.std if cfg.std is not None else splits.std
    for label, values in (("mean", mean), ("std", std)):
        if len(values) != splits.channels:
            raise RetrofitError(f"--{label} needs {splits.channels} values, got {list(values)}")
    if any(s <= 0 for s in std):
        raise RetrofitError(f"--std values must be positive, got {list(std)}")
    return dataclasses.replace(splits, mean=tuple(mean), std=tuple(std))


def _check_config(cfg: RetrofitConfig) -> str:
    """Before the slow part, what the export would refuse at its start; the model's name."""
    if cfg.num_exits < 1:
        raise RetrofitError(f"--exits must be >= 1, got {cfg.num_exits}")
    try:
        return check_export_config(cfg.export)
    except ValueError as exc:
        raise RetrofitError(str(exc)) from exc


def retrofit(cfg: RetrofitConfig) -> RetrofitResult:
    """Add early exits to a trained ONNX classifier and write a served model directory.

    Finds the cuts, computes the backbone's features at each cut once in ONNX Runtime, trains an
    exit head per cut in torch (the backbone never changes), and hands the stage graphs to
    export's checked sequence: the chained stages must reproduce the original output, then
    calibration, manifest and `agreement.json` as for a trained model.

    Args:
        cfg: The classifier, data, cuts, head training and export options
            (`elf-export retrofit`'s flags).

    Returns:
        The model directory, its manifest, the cuts and the time of each phase.

    Raises:
        RetrofitError: The model is not a classifier, a cut does not separate the graph, or the
            data's classes do not match the model's outputs.
    """
    _check_config(cfg)
    ex = cfg.export
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    clf = load_classifier(cfg.onnx, cfg.channels, cfg.image_size)
    splits = load_data(cfg, clf)
    cuts = choose_cuts(clf, cfg.cuts, cfg.num_exits)
    providers = providers_for(ex.device)
    kw = {"providers": providers, "batch_size": ex.batch_size, "progress": ex.progress}
    train = compute_features(clf, cuts, splits.train, splits.mean, splits.std, desc="train", **kw)  # type: ignore[arg-type]
    seconds["features"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    heads = train_heads(
        [c.shape for c in cuts], clf.num_classes, train, splits.train_class_counts, cfg.head,
        progress=ex.progress,
    )  # fmt: skip
    del train
    seconds["heads"] = time.perf_counter() - t1
    card = ModelCard(
        class_names=list(splits.class_names),
        preprocessing=preprocessing(splits),
        provenance=_provenance(cfg, clf, splits),
    )
    calibrate, agreement = validation_steps(splits, ex, model_name(ex), providers)
    record = _record(cfg, clf, cuts, seconds)
    res = write_model_dir(
        RetrofitGraphs(clf, cuts, heads, splits, ex.parity_images),
        card,
        ex,
        calibrate=_timed(calibrate, seconds, time.perf_counter()),
        after_manifest=lambda model_dir: (agreement(model_dir), record(model_dir)),
    )
    assert res.calibration is not None  # validation_steps' calibration always measures
    seconds["total"] = time.perf_counter() - t0
    return RetrofitResult(res.model_dir, res.manifest, cuts, res.checks, res.calibration, seconds)


def _timed(step: CalibrationStep, seconds: dict[str, float], t_graphs: float) -> CalibrationStep:
    """`step`, recording the graph phase (until calibration starts) and calibration's time."""

    def timed(
        stage_paths: Sequence[Path], per_stage: Sequence[tuple[int, int]], model_dir: Path
    ) -> Calibrated:
        t = time.perf_counter()
        seconds["graphs"] = t - t_graphs
        cal = step(stage_paths, per_stage, model_dir)
        seconds["calibration"] = time.perf_counter() - t
        return cal

    return timed


def _provenance(cfg: RetrofitConfig, clf: Classifier, splits: DataSplits) -> Provenance:
    h = cfg.head
    loss = "balanced_softmax" + (
        f" + {h.distill:g} x distillation (T={h.temperature:g})" if h.distill else ""
    )
    return provenance(
        splits,
        method=f"retrofit: exit heads on the frozen {clf.path.name}",
        loss=loss,
        architecture=f"onnx:{clf.path.name}",
        epochs=h.epochs,
        command=cfg.export.command,
    )


def _record(
    cfg: RetrofitConfig, clf: Classifier, cuts: Sequence[Cut], seconds: dict[str, float]
) -> Callable[[Path], None]:
    """Writes retrofit.json: what was cut where, the heads, the resolved data config (from which
    `elf-export calibrate` rebuilds the splits) and the wall time of each phase so far."""

    def write(model_dir: Path) -> None:
        record = {
            "onnx": str(cfg.onnx),
            "input": clf.input_name,
            "output": clf.output_name,
            "flops_original": clf.total_flops,
            "cuts": [dataclasses.asdict(c) for c in cuts],
            "head": dataclasses.asdict(cfg.head),
            "data": to_dict(_data_config(cfg, clf)),
            "seconds": {k: round(v, 2) for k, v in seconds.items()},
            "command": cfg.export.command,
        }
        text = json.dumps(record, indent=1) + "\n"
        (model_dir / RETROFIT_FILE).write_text(text, encoding="utf-8")

    return write
