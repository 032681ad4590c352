"""ELF_* settings and the elf-serve command line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from server import cli, frontend
from server.settings import Settings, available_cpus, unknown_variables


def test_settings_read_the_environment_and_are_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELF_MODEL_DIR", "/srv/models")
    monkeypatch.setenv("ELF_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("ELF_PROVIDERS", "cpu")
    monkeypatch.setenv("ELF_ADMIN_TOKEN", "hunter2-xyz")
    s = Settings()
    assert s.model_dir == Path("/srv/models") and s.max_batch_size == 16
    assert s.providers == "cpu" and s.admin_token is not None
    assert s.admin_token.get_secret_value() == "hunter2-xyz" and "hunter2" not in repr(s)
    with pytest.raises(ValidationError):
        s.max_batch_size = 3


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("ELF_PROVIDERS", "tpu"),
        ("ELF_MAX_BATCH_SIZE", "0"),
        ("ELF_MAX_QUEUE_DELAY_MS", "-1"),
        ("ELF_BATCH_CAP", "8"),
        ("ELF_BATCH_CAP_TOLERANCE", "1"),
        ("ELF_BATCH_CAP_TOLERANCE", "-0.01"),
    ],
)
def test_invalid_settings_fail_loudly(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError, match=var.removeprefix("ELF_").lower()):
        Settings()


def test_threads_are_sized_to_the_machine() -> None:
    assert Settings(intra_op_threads=3).threads_per_session() == 3
    assert Settings().threads_per_session() == available_cpus()
    assert Settings(workers=available_cpus() * 4).threads_per_session() == 1


def test_cli_flags_become_settings(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    seen: dict[str, object] = {}
    monkeypatch.setattr(frontend.uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    for key in [k for k in os.environ if k.startswith("ELF_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("ELF_MAX_QUEUE_SIZE", "7")  # unset flags leave the environment alone
    monkeypatch.setenv("ELF_MAX_IMAGES_PER_REQUEST", "7")
    m = str(tiny_model_dir)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    cli.main(["--port", "9123", "--model-dir", m, "--max-batch-size", "4", "--workers", "2"])
    # Two workers made a metrics directory for the run; neither it nor the variable outlives it
    # (a leaked variable naming a removed directory broke every later app in the process).
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    assert seen["app"] == "server.app:app_from_env" and seen["factory"] is True
    assert seen["port"] == 9123 and seen["workers"] == 2 and seen["host"] == "127.0.0.1"
    s = Settings()
    assert (s.model_dir, s.max_batch_size, s.workers, s.max_queue_size) == (Path(m), 4, 2, 7)


def test_unknown_elf_variables_are_reported() -> None:
    env = {"ELF_MAX_BATCH_SIZE": "4", "ELF_MAX_BATCHSIZE": "4", "HOME": "/", "elf_port": "1"}
    assert unknown_variables(env) == ["ELF_MAX_BATCHSIZE", "elf_port"]
