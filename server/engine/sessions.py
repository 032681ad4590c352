"""ONNX Runtime sessions: which providers, how many threads, one session per stage."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from elf_core.manifest import Manifest, ManifestError
from server.engine.placement import (
    CPU,
    CUDA,
    EngineError,
    Placement,
    ProviderList,
    check_placement,
    requested_providers,
    session_options,
    wants_cuda,
)
from server.settings import Settings

__all__ = [
    "CPU",
    "CUDA",
    "EngineError",
    "StageSessions",
    "load_stage_sessions",
    "requested_providers",
    "session_options",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSessions:
    """One session per stage, and what ONNX Runtime actually runs them on."""

    sessions: list[ort.InferenceSession]
    providers: list[str]  # active, read back from the sessions
    device: str  # "cuda" or "cpu": where features live between stages
    device_id: int
    requested: ProviderList
    options: ort.SessionOptions
    choice: str  # ELF_PROVIDERS
    warning: str | None = None  # CPU fallback under ELF_PROVIDERS=auto

    def check(self, what: str, sess: ort.InferenceSession) -> Placement:
        """Another session of this model (a merge graph) must run where the stages run."""
        available = ort.get_available_providers()
        return check_placement(what, self.choice, available, sess.get_providers(), self.device)


def check_graphs(manifest: Manifest, model_dir: Path) -> None:
    """Every ONNX graph the manifest names loads in ONNX Runtime (CPU, unoptimised: a parse and
    a type check, not a warm-up); ManifestError naming the file, so that a corrupt graph whose
    sha256 was rewritten ends start-up in one line like every other model-directory fault."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 4  # the ManifestError says it; ORT's own log would say it twice
    refs = [*manifest.stages, *([manifest.full_model] if manifest.full_model else [])]
    for ref in refs:
        path = model_dir / ref.file
        try:
            ort.InferenceSession(str(path), sess_options=opts, providers=[CPU])
        except Exception as exc:  # ORT raises its own types (InvalidProtobuf, Fail, ...)
            reason = " ".join(str(exc).split())[:300]
            raise ManifestError(f"{path}: ONNX Runtime cannot load it ({reason})") from exc


def load_stage_sessions(manifest: Manifest, model_dir: Path, settings: Settings) -> StageSessions:
    available = ort.get_available_providers()
    requested = requested_providers(settings, available)
    if wants_cuda(requested) and settings.cuda_preload_dlls and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # onnxruntime >= 1.21; no-op for libraries already loaded
    opts = session_options(settings.threads_per_session(), settings.ort_spinning, requested)
    sessions = [
        ort.InferenceSession(str(model_dir / s.file), sess_options=opts, providers=requested)
        for s in manifest.stages
    ]
    name, choice = manifest.name, settings.providers
    first = check_placement(
        f"{name} {manifest.stages[0].file}", choice, available, sessions[0].get_providers()
    )
    for spec, sess in zip(manifest.stages[1:], sessions[1:], strict=True):
        what = f"{name} {spec.file}"
        check_placement(what, choice, available, sess.get_providers(), first.device)
        if sess.get_providers() != first.providers:
            active = sess.get_providers()
            raise EngineError(f"{what} runs on {active}, stage 0 on {first.providers}")
    if first.warning:
        log.warning("%s", first.warning)
    elif choice == "auto" and CUDA not in available:
        log.info("model %s: this onnxruntime has no %s; running on the CPU", name, CUDA)
    log.info(
        "model %s: %d stage sessions on %s (%d intra-op threads)",
        name,
        len(sessions),
        ", ".join(first.providers),
        opts.intra_op_num_threads,
    )
    return StageSessions(
        sessions,
        first.providers,
        first.device,
        settings.cuda_device_id,
        requested,
        opts,
        choice,
        first.warning,
    )
