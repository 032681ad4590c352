"""The models a server holds: found under ELF_MODEL_DIR, loaded through the manifest, warmed up."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from elf_core.exits import check_thresholds, exit_thresholds
from elf_core.manifest import (
    MANIFEST_FILE,
    Agreement,
    Manifest,
    ManifestError,
    load_agreement,
    load_manifest,
)
from server.batching.audit import Auditor
from server.batching.batch_cap import BatchCap, batch_cap
from server.batching.batcher import Batcher
from server.batching.controller import ControllerThread
from server.engine.runner import OnnxStageRunner
from server.engine.sessions import load_stage_sessions
from server.full_model import FullModelPath, load_full_path
from server.metrics import Metrics
from server.preprocess import InputError
from server.settings import Settings

log = logging.getLogger(__name__)

ExitMode = Literal["auto", "final"]


class UnknownModelError(LookupError):
    pass


@dataclass
class ServedModel:
    directory: Path
    manifest: Manifest
    runner: OnnxStageRunner
    batcher: Batcher
    curve: Any | None  # calibration.json, as exported
    thresholds: tuple[float, ...]  # current defaults, K values (the last is 0)
    agreement: Agreement | None = None  # agreement.json: expected agreement per exit
    controller: ControllerThread | None = None  # ELF_LATENCY_TARGET_MS (server/adaptive.py)
    batch_cap: BatchCap | None = None  # the batcher's cap on rows per batch (ELF_BATCH_CAP)
    full: FullModelPath | None = None  # exit=final through full.onnx (server/full_model.py)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def num_exits(self) -> int:
        return self.manifest.num_exits

    @property
    def providers(self) -> list[str]:
        return self.runner.stages.providers

    @property
    def warnings(self) -> list[str]:
        """What an operator must know about where the model runs (a CPU fallback)."""
        warning = self.runner.stages.warning
        return [warning] if warning else []

    def row_thresholds(self, threshold: float | None, mode: ExitMode) -> np.ndarray:
        """Per-exit thresholds for one request: [K] float64 (the last exit always answers)."""
        k = self.num_exits
        if mode == "final":
            return exit_thresholds([np.inf] * (k - 1), k)
        if threshold is not None:
            return exit_thresholds([threshold] * (k - 1), k)
        return exit_thresholds(self.thresholds, k)

    def start(self) -> None:
        """Start the batchers' workers (the stage chain's and exit=final's)."""
        self.batcher.start()
        if self.full is not None:
            self.full.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the load controller, then answer every admitted row and end the workers."""
        if self.controller is not None:
            self.controller.stop()
        self.batcher.stop(timeout_s)
        if self.full is not None:
            self.full.stop(timeout_s)

    def set_thresholds(self, values: list[float]) -> tuple[float, ...]:
        """Accept K-1 (auxiliary exits) or K values (then the last must be 0); return the old."""
        k = self.num_exits
        try:
            check_thresholds(values, k)
        except ValueError as exc:
            raise InputError(f"{self.name}: {exc}") from None
        new = tuple(float(v) for v in exit_thresholds(values, k))
        with self._lock:
            old, self.thresholds = self.thresholds, new
        return old


@dataclass
class ModelRegistry:
    models: dict[str, ServedModel]
    default: str

    def get(self, name: str | None = None) -> ServedModel:
        key = self.default if name is None else name
        try:
            return self.models[key]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise UnknownModelError(f"unknown model {key!r} (served: {known})") from None

    def stop(self, timeout_s: float | None = None) -> None:
        for model in self.models.values():
            model.stop(timeout_s)


def find_model_dirs(root: Path) -> list[Path]:
    """`root` itself when it holds a manifest, else its sub-directories that do."""
    if (root / MANIFEST_FILE).is_file():
        return [root]
    if not root.is_dir():
        raise ManifestError(f"{root}: model directory does not exist")
    dirs = sorted(p for p in root.iterdir() if (p / MANIFEST_FILE).is_file())
    if not dirs:
        raise ManifestError(f"{root}: no {MANIFEST_FILE} here or in any sub-directory")
    return dirs


def load_curve(model_dir: Path, manifest: Manifest) -> Any | None:
    name = manifest.calibration.curve_file if manifest.calibration else "calibration.json"
    if name is None or not (model_dir / name).is_file():
        if manifest.calibration is not None and name is not None:
            log.warning("%s: %s is named in the manifest but missing", model_dir, name)
        return None
    try:
        return json.loads((model_dir / name).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{model_dir / name}: not valid JSON ({exc})") from exc


def load_model(
    model_dir: Path, manifest: Manifest, settings: Settings, metrics: Metrics
) -> ServedModel:
    b = settings.max_batch_size
    runner = OnnxStageRunner(manifest, load_stage_sessions(manifest, model_dir, settings), b)
    runner.warm_up(list(range(1, b + 1)) if settings.warmup_all_batch_sizes else sorted({1, b}))
    pre = manifest.preprocessing
    cap = batch_cap(
        settings.batch_cap,
        runner,
        (pre.channels, pre.height, pre.width),
        max_batch_size=b,
        tolerance=settings.batch_cap_tolerance,
        policy=settings.scheduling,
        model=manifest.name,
    )
    audit = None
    if settings.audit_rate > 0 and runner.num_stages > 1:
        audit = Auditor(
            settings.audit_rate,
            runner.num_stages,
            max_batch_size=cap.size,
            model=manifest.name,
            metrics=metrics,
        )
    batcher = Batcher(
        runner,
        max_batch_size=cap.size,
        max_queue_delay_s=settings.max_queue_delay_ms / 1000.0,
        max_queue_size=settings.max_queue_size,
        model=manifest.name,
        metrics=metrics,
        audit=audit,
        scheduling=settings.scheduling,
    )
    curve = load_curve(model_dir, manifest)
    try:
        agreement = load_agreement(model_dir)
    except ValueError as exc:
        raise ManifestError(str(exc)) from exc
    model = ServedModel(model_dir, manifest, runner, batcher, curve, (), agreement, batch_cap=cap)
    model.full = load_full_path(
        model_dir, manifest, settings, metrics, max_batch_size=cap.size, stage_batcher=batcher
    )
    metrics.batch_cap.labels(model=manifest.name).set(cap.size)
    for e in agreement.exits if agreement is not None else []:
        if e.agreement is not None:
            metrics.audit_expected.labels(model=manifest.name, exit=str(e.exit)).set(e.agreement)
    model.set_thresholds(manifest.thresholds)
    metrics.set_thresholds(manifest.name, model.thresholds)
    providers = ",".join(model.providers)
    metrics.model_info.labels(
        model=manifest.name, version=manifest.version, providers=providers
    ).set(1)
    return model


def find_manifests(settings: Settings) -> dict[str, tuple[Path, Manifest]]:
    """Every model's directory and checked manifest (files and sha256 too), by model name."""
    found: dict[str, tuple[Path, Manifest]] = {}
    for d in find_model_dirs(settings.model_dir):
        manifest = load_manifest(d)
        if manifest.name in found:
            other = found[manifest.name][0]
            raise ManifestError(f"{d}: model name {manifest.name!r} is also used by {other}")
        found[manifest.name] = (d, manifest)
    default = settings.default_model or sorted(found)[0]
    if default not in found:
        raise ManifestError(f"ELF_DEFAULT_MODEL={default!r} is not among {sorted(found)}")
    return found


def load_models(settings: Settings, metrics: Metrics) -> ModelRegistry:
    """Load, check and warm every model, then start their batchers."""
    models = {
        name: load_model(d, manifest, settings, metrics)
        for name, (d, manifest) in find_manifests(settings).items()
    }
    for model in models.values():
        model.start()
        log.info("serving %s %s on %s", model.name, model.manifest.version, model.providers)
    return ModelRegistry(models, settings.default_model or sorted(models)[0])
