"""ONNX Runtime sessions: which providers, how many threads, one session per stage."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from elf_core.manifest import Manifest
from elf_core.providers import CUDA, ProviderError, ProviderList, select_providers
from server.settings import Settings

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """The engine cannot start as configured; the message says why."""


def requested_providers(choice: str, device_id: int = 0) -> ProviderList:
    """Providers to ask ONNX Runtime for (elf_core.providers' rule): auto = CUDA when this
    onnxruntime build has it."""
    try:
        return select_providers(choice, ort.get_available_providers(), device_id)
    except ProviderError as exc:
        raise EngineError(f"ELF_PROVIDERS={choice}: {exc}") from None


def session_options(threads: int, spinning: bool) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    flag = "1" if spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", flag)
    opts.add_session_config_entry("session.inter_op.allow_spinning", flag)
    return opts


@dataclass(frozen=True)
class StageSessions:
    """One session per stage, and what ONNX Runtime actually runs them on."""

    sessions: list[ort.InferenceSession]
    providers: list[str]  # active, read back from the sessions
    device: str  # "cuda" or "cpu": where features live between stages
    device_id: int
    requested: ProviderList
    options: ort.SessionOptions


def load_stage_sessions(manifest: Manifest, model_dir: Path, settings: Settings) -> StageSessions:
    requested = requested_providers(settings.providers, settings.cuda_device_id)
    opts = session_options(settings.threads_per_session(), settings.ort_spinning)
    sessions = [
        ort.InferenceSession(str(model_dir / s.file), sess_options=opts, providers=requested)
        for s in manifest.stages
    ]
    active = sessions[0].get_providers()
    for k, sess in enumerate(sessions):
        if sess.get_providers() != active:
            raise EngineError(
                f"{manifest.name}: stage {k} runs on {sess.get_providers()}, stage 0 on {active}"
            )
    if settings.providers == "cuda" and CUDA not in active:
        raise EngineError(
            f"{manifest.name}: ELF_PROVIDERS=cuda but the sessions run on {active} "
            "(CUDA libraries missing or no GPU visible)"
        )
    device = "cuda" if CUDA in active else "cpu"
    log.info(
        "model %s: %d stage sessions on %s (%d intra-op threads)",
        manifest.name,
        len(sessions),
        ", ".join(active),
        opts.intra_op_num_threads,
    )
    return StageSessions(sessions, active, device, settings.cuda_device_id, requested, opts)
