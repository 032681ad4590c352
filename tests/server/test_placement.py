"""Provider choice, CUDA options and the placement check: provider lists are data, so the decisions
are tested here without a GPU; the CPU fallback path runs for real against the CPU onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from elf_core.manifest import load_manifest
from server.app import create_app
from server.engine.placement import (
    CPU,
    CUDA,
    DISABLE_CPU_FALLBACK,
    EngineError,
    check_placement,
    cuda_provider_options,
    node_providers,
    probe_cuda,
    requested_providers,
    session_options,
)
from server.engine.sessions import load_stage_sessions
from tests.server.conftest import make_settings

BOTH = [CUDA, CPU]


def test_cuda_options_come_from_settings(tiny_model_dir: Path) -> None:
    defaults = cuda_provider_options(make_settings(tiny_model_dir))
    assert defaults == {
        "device_id": "0",
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kSameAsRequested",
        "use_tf32": "0",
    }
    tuned = cuda_provider_options(
        make_settings(
            tiny_model_dir,
            cuda_device_id=1,
            cudnn_conv_algo_search="EXHAUSTIVE",
            cuda_arena_extend_strategy="kNextPowerOfTwo",
            cuda_mem_limit_bytes=2 << 30,
            cuda_tf32=True,
        )
    )
    assert tuned == {
        "device_id": "1",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "arena_extend_strategy": "kNextPowerOfTwo",
        "use_tf32": "1",
        "gpu_mem_limit": str(2 << 30),
    }


def test_settings_refuse_unknown_cuda_option_values(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="cudnn_conv_algo_search"):
        make_settings(tiny_model_dir, cudnn_conv_algo_search="FAST")
    monkeypatch.setenv("ELF_CUDA_MEM_LIMIT_BYTES", "-1")
    with pytest.raises(ValueError, match="cuda_mem_limit_bytes"):
        make_settings(tiny_model_dir)


def test_requested_providers(tiny_model_dir: Path) -> None:
    s = make_settings(tiny_model_dir, providers="auto")
    assert requested_providers(make_settings(tiny_model_dir), BOTH) == [CPU]
    assert requested_providers(s, [CPU]) == [CPU]
    assert requested_providers(s, BOTH) == [(CUDA, cuda_provider_options(s)), CPU]
    strict = make_settings(tiny_model_dir, providers="cuda", cuda_cpu_fallback=False)
    assert requested_providers(strict, BOTH) == [(CUDA, cuda_provider_options(strict))]
    with pytest.raises(EngineError, match="ELF_PROVIDERS=cuda but this onnxruntime has no"):
        requested_providers(make_settings(tiny_model_dir, providers="cuda"), [CPU])


def fallback_entry(opts: ort.SessionOptions) -> str | None:
    try:
        return opts.get_session_config_entry(DISABLE_CPU_FALLBACK)
    except RuntimeError:  # "does not have configuration with key"
        return None


def test_session_options_log_warnings_and_disable_fallback_on_cuda_only() -> None:
    cpu = session_options(1, False, [CPU])
    assert cpu.log_severity_level == 3 and fallback_entry(cpu) is None
    cuda = session_options(1, False, [(CUDA, {}), CPU])
    assert cuda.log_severity_level == 2
    assert fallback_entry(cuda) is None  # CPU is listed: ORT refuses both together
    strict = session_options(1, False, [(CUDA, {})])
    assert strict.log_severity_level == 2 and fallback_entry(strict) == "1"


@pytest.mark.parametrize(
    "case",
    [
        ("cpu", BOTH, [CPU], None, "cpu", False),
        ("auto", [CPU], [CPU], None, "cpu", False),  # CPU onnxruntime: CPU by design
        ("auto", BOTH, BOTH, None, "cuda", False),
        ("auto", BOTH, [CPU], None, "cpu", True),  # onnxruntime-gpu without a usable GPU
        ("cuda", BOTH, BOTH, None, "cuda", False),
        ("cuda", BOTH, [CUDA], "cuda", "cuda", False),
        ("auto", BOTH, [CPU], "cpu", "cpu", True),
    ],
)
def test_placement_accepted(case: tuple[str, list[str], list[str], str | None, str, bool]) -> None:
    """(ELF_PROVIDERS, available, active, the stages' device, judged device, warns)."""
    choice, available, active, expected, device, warns = case
    p = check_placement("m stage_0.onnx", choice, available, active, expected)
    assert (p.device, p.providers, p.warning is not None) == (device, active, warns)
    if warns:
        assert "CPU fallback" in str(p.warning) and "m stage_0.onnx" in str(p.warning)


@pytest.mark.parametrize(
    ("choice", "active", "expected", "message"),
    [
        ("cuda", [CPU], None, "ELF_PROVIDERS=cuda but the session runs on CPUExecutionProvider"),
        ("cuda", [CPU, CUDA], None, "ELF_PROVIDERS=cuda but"),  # CUDA present but not first
        ("auto", [CPU], "cuda", "stage sessions run on cuda"),  # a merge graph fell back
        ("auto", BOTH, "cpu", "stage sessions run on cpu"),
        ("cuda", [], None, "no provider"),
    ],
)
def test_placement_refused(
    choice: str, active: list[str], expected: str | None, message: str
) -> None:
    with pytest.raises(EngineError, match=message):
        check_placement("m", choice, BOTH, active, expected)


@pytest.fixture
def onnxruntime_claims_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """What onnxruntime-gpu reports on a machine without a usable GPU: CUDA is "available", and
    a session asked for it runs on the CPU (here the CPU onnxruntime drops the CUDA request)."""
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, *real])


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
@pytest.mark.usefixtures("onnxruntime_claims_cuda")
def test_auto_cpu_fallback_is_a_warning_a_label_and_a_line_in_the_model(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tiny_model_dir, providers="auto")
    with TestClient(create_app(settings)) as c:
        detail = c.get("/v1/models/tiny").json()
        metrics = c.get("/metrics").text
    assert detail["device"] == "cpu" and detail["providers"] == [CPU]
    assert len(detail["warnings"]) == 1 and "CPU fallback" in detail["warnings"][0]
    assert f'providers="{CPU}"' in metrics
    fallback = [r for r in caplog.records if "CPU fallback" in r.getMessage()]
    assert fallback and fallback[0].levelname == "WARNING"


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
@pytest.mark.usefixtures("onnxruntime_claims_cuda")
def test_cuda_required_and_not_started_fails_start_up(tiny_model_dir: Path) -> None:
    manifest = load_manifest(tiny_model_dir)
    settings = make_settings(tiny_model_dir, providers="cuda")
    with pytest.raises(EngineError, match=r"tiny stage_0\.onnx: ELF_PROVIDERS=cuda but"):
        load_stage_sessions(manifest, tiny_model_dir, settings)


def test_without_a_fallback_a_node_the_providers_cannot_run_fails(tiny_model_dir: Path) -> None:
    """ELF_CUDA_CPU_FALLBACK=false: here the CUDA provider is missing, so every node is left
    for the CPU, and ORT refuses the session instead of running it there."""
    opts = session_options(1, False, [(CUDA, {})])
    with pytest.raises(Exception, match="fallback to CPU EP has been explicitly disabled"):
        ort.InferenceSession(
            str(tiny_model_dir / "stage_0.onnx"), sess_options=opts, providers=[CUDA]
        )


def test_no_model_placement_warning_on_plain_cpu(client: TestClient) -> None:
    assert client.get("/v1/models/tiny").json()["warnings"] == []


def test_node_providers_reads_where_each_node_ran(tiny_model_dir: Path, tmp_path: Path) -> None:
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "prof")
    sess = ort.InferenceSession(str(tiny_model_dir / "stage_0.onnx"), opts, providers=[CPU])
    sess.run(None, {"input": np.zeros((2, 1, 28, 28), np.float32)})
    placed = node_providers(sess.end_profiling())
    assert placed and {p for _, p in placed.values()} == {CPU}
    assert "Gemm" in {op for op, _ in placed.values()}


def test_probe_cuda_gives_the_reason_here() -> None:
    if CUDA in ort.get_available_providers():
        pytest.skip("this machine's onnxruntime has CUDA: tests/server/test_gpu.py covers it")
    reason = probe_cuda()
    assert reason is not None and reason.startswith(f"this onnxruntime has no {CUDA}")
