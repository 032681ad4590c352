"""Which execution providers to ask ONNX Runtime for, with which options, and whether a session
really got them.

ONNX Runtime does not fail when the CUDA provider cannot start (libraries missing, no GPU): the
session quietly runs on the CPU. So every session's active providers are read back and judged by
`check_placement`, which works on plain provider lists and is unit-tested without a GPU.
Option names and values are ONNX Runtime's (CUDA Execution Provider documentation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from elf_core.provider_choice import CPU, CUDA, ProviderError, ProviderList, select_providers
from server.settings import Settings

# Session config key (onnxruntime_session_options_config_keys.h): nodes that the listed providers
# cannot run fail session creation instead of landing on an implicit CPU provider.
DISABLE_CPU_FALLBACK = "session.disable_cpu_ep_fallback"
WARNING_SEVERITY, ERROR_SEVERITY = 2, 3  # ORT log severities


class EngineError(RuntimeError):
    """The engine cannot start as configured; the message says why."""


def cuda_provider_options(settings: Settings) -> dict[str, str]:
    """CUDAExecutionProvider options from the ELF_CUDA_* / ELF_CUDNN_* settings."""
    options = {
        "device_id": str(settings.cuda_device_id),
        "cudnn_conv_algo_search": settings.cudnn_conv_algo_search,
        "arena_extend_strategy": settings.cuda_arena_extend_strategy,
        "use_tf32": "1" if settings.cuda_tf32 else "0",
    }
    if settings.cuda_mem_limit_bytes > 0:
        options["gpu_mem_limit"] = str(settings.cuda_mem_limit_bytes)
    return options


def requested_providers(settings: Settings, available: list[str] | None = None) -> ProviderList:
    """Providers to ask for: auto = CUDA (then CPU) when this onnxruntime build has CUDA.

    With ELF_CUDA_CPU_FALLBACK=false only CUDA is listed (see `session_options`).
    """
    available = ort.get_available_providers() if available is None else available
    try:
        return select_providers(
            settings.providers,
            available,
            cuda_options=cuda_provider_options(settings),
            cpu_fallback=settings.cuda_cpu_fallback,
        )
    except ProviderError as exc:
        raise EngineError(f"ELF_PROVIDERS={exc}") from None


def wants_cuda(requested: ProviderList) -> bool:
    return any((p[0] if isinstance(p, tuple) else p) == CUDA for p in requested)


def session_options(
    threads: int, spinning: bool, requested: ProviderList | None = None
) -> ort.SessionOptions:
    """The server's session options; for CUDA sessions ORT warnings are logged (severity 2:
    "Memcpy nodes are added", "Some nodes were not assigned" tell a node runs on the CPU), and
    without CPU in `requested` the CPU fallback is disabled."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    cuda = requested is not None and wants_cuda(requested)
    opts.log_severity_level = WARNING_SEVERITY if cuda else ERROR_SEVERITY
    if cuda and CPU not in (requested or []):
        opts.add_session_config_entry(DISABLE_CPU_FALLBACK, "1")
    flag = "1" if spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", flag)
    opts.add_session_config_entry("session.inter_op.allow_spinning", flag)
    return opts


@dataclass(frozen=True)
class Placement:
    """Where a session runs, judged from provider lists."""

    device: str  # "cuda" or "cpu"
    providers: list[str]  # active, in ORT's order
    warning: str | None = None  # set when ELF_PROVIDERS=auto fell back to the CPU


def check_placement(
    what: str,
    choice: str,
    available: list[str],
    active: list[str],
    expected_device: str | None = None,
) -> Placement:
    """Judge a session's active providers.

    `expected_device`: where the model's other sessions run (None for the first stage session,
    whose placement decides). A session that did not get CUDA first although CUDA is required
    (ELF_PROVIDERS=cuda, or the other sessions run on CUDA) is an EngineError; under auto a first
    session on the CPU although this onnxruntime has CUDA is a CPU fallback: a warning.
    """
    on_cuda = bool(active) and active[0] == CUDA
    device = "cuda" if on_cuda else "cpu"
    listed = ", ".join(active) or "no provider"
    if expected_device is not None and device != expected_device:
        raise EngineError(
            f"{what} runs on {listed} but the model's stage sessions run on {expected_device}: "
            "every session of a model must run on one device"
        )
    if choice == "cpu" or on_cuda:
        return Placement(device, list(active))
    if choice == "cuda":
        raise EngineError(
            f"{what}: ELF_PROVIDERS=cuda but the session runs on {listed} "
            "(CUDA or cuDNN libraries missing, or no GPU visible; ORT's log says which)"
        )
    if CUDA in available:
        warning = (
            f"{what}: ELF_PROVIDERS=auto and onnxruntime has {CUDA}, but the session runs on "
            f"{listed}: CPU fallback (CUDA or cuDNN libraries missing, or no GPU visible)"
        )
        return Placement(device, list(active), warning)
    return Placement(device, list(active))


def probe_cuda(device_id: int = 0) -> str | None:
    """None when a CUDA session really starts on `device_id` and runs there; else the reason.

    Asks onnxruntime rather than looking for /dev/nvidia* (containers name devices freely).
    """
    from server.engine.onnx_bytes import merge_rows_model  # noqa: PLC0415 (cycle-free, small)

    available = ort.get_available_providers()
    if CUDA not in available:
        return f"this onnxruntime has no {CUDA} (available: {', '.join(available)})"
    requested: ProviderList = [(CUDA, {"device_id": str(device_id)})]
    try:
        sess = ort.InferenceSession(
            merge_rows_model(1, 1), session_options(1, False, requested), providers=requested
        )
        if sess.get_providers()[0] != CUDA:
            return f"a CUDA session runs on {sess.get_providers()}"
        x = np.arange(3, dtype=np.float32)
        y = sess.run(None, {"x_0": x, "rows": np.array([2, 0], dtype=np.int64)})[0]
    except Exception as exc:  # ORT raises plain RuntimeError/Fail types; the text is the reason
        return f"a CUDA session could not run: {exc}"
    if y.tolist() != [2.0, 0.0]:
        return f"a CUDA session computed {y.tolist()} instead of [2.0, 0.0]"
    return None


def node_providers(profile_file: str) -> dict[str, tuple[str, str]]:
    """{node name: (op type, provider)} from an ORT profile (SessionOptions.enable_profiling):
    where each graph node really ran."""
    with open(profile_file, encoding="utf-8") as f:
        events = json.load(f)
    out: dict[str, tuple[str, str]] = {}
    for e in events:
        args = e.get("args", {})
        if e.get("cat") == "Node" and "provider" in args:
            out[e["name"].removesuffix("_kernel_time")] = (args["op_name"], args["provider"])
    return out
