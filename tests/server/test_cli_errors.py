"""Each user mistake with `elf-serve` ends in one line `elf-serve: error: ...` and exit code 2,
before uvicorn starts (the real CLI as a subprocess); the traceback only with --log-level debug."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.server.live import elf_serve, free_port

pytestmark = pytest.mark.integration


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ELF_")}
    cmd = [elf_serve(), "--port", str(free_port()), "--providers", "cpu", *args]
    env = environ | env
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)


def _edit_manifest(edit: Callable[[dict[str, Any]], object]) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        m = json.loads((d / "manifest.json").read_text())
        edit(m)
        (d / "manifest.json").write_text(json.dumps(m))

    return apply


def _drop_last_exit(m: dict[str, Any]) -> None:
    m["exits"].pop()


def _corrupt_graph(d: Path) -> None:
    """stage_1.onnx cut in half after export, its sha256 rewritten to match: the manifest's
    check passes, ONNX Runtime cannot parse the graph."""
    stage = d / "stage_1.onnx"
    stage.write_bytes(stage.read_bytes()[: stage.stat().st_size // 2])
    digest = hashlib.sha256(stage.read_bytes()).hexdigest()
    _edit_manifest(lambda m: m["stages"][1].update(sha256=digest))(d)


BROKEN: dict[str, tuple[Callable[[Path], object], str]] = {
    "sha256 mismatch": (
        lambda d: (d / "stage_1.onnx").write_bytes((d / "stage_1.onnx").read_bytes() + b"\0"),
        r"stage_1\.onnx: sha256 mismatch",
    ),
    "missing stage file": (
        lambda d: (d / "stage_2.onnx").unlink(),
        r"stage_2\.onnx: missing \(named in manifest\.json\)",
    ),
    "bad JSON": (
        lambda d: (d / "manifest.json").write_text('{"name": "tiny",'),
        r"manifest\.json: not valid JSON",
    ),
    "threshold 1.5": (
        _edit_manifest(lambda m: m["exits"][0].update(threshold=1.5)),
        r"invalid manifest: .*exits\.0\.threshold",
    ),
    "exits vs stages": (_edit_manifest(_drop_last_exit), r"invalid manifest: .*exit"),
    "corrupt graph, sha256 updated": (
        _corrupt_graph,
        r"stage_1\.onnx: ONNX Runtime cannot load it \(",
    ),
}


def _assert_one_line(proc: subprocess.CompletedProcess[str], pattern: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("elf-serve: error: ")
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("fault", list(BROKEN))
def test_each_model_directory_fault_is_one_line(
    fault: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    broken = shutil.copytree(tiny_model_dir, tmp_path / "tiny")
    breaks, pattern = BROKEN[fault]
    breaks(broken)
    proc = _run("--model-dir", str(broken))
    _assert_one_line(proc, pattern)
    assert "ELF_MODEL_DIR" in proc.stderr  # how to fix: which setting points there


def test_missing_and_wrong_model_dirs(tmp_path: Path) -> None:
    _assert_one_line(_run("--model-dir", str(tmp_path / "nope")), "model directory does not exist")
    (tmp_path / "empty").mkdir()
    _assert_one_line(_run("--model-dir", str(tmp_path / "empty")), "no manifest.json here")


@pytest.mark.parametrize(
    ("args", "env", "pattern"),
    [
        (["--max-batch-size", "zero"], {}, r"ELF_MAX_BATCH_SIZE \(--max-batch-size\)='zero': "),
        (["--max-queue-delay-ms", "-1"], {}, r"ELF_MAX_QUEUE_DELAY_MS .*greater than or equal"),
        ([], {"ELF_MAX_QUEUE_SIZE": "4"}, r"ELF_MAX_QUEUE_SIZE=4 is below ELF_MAX_IMAGES_PER_RE"),
        ([], {"ELF_DEFAULT_MODEL": "nope"}, r"ELF_DEFAULT_MODEL='nope' is not among \['tiny'\]"),
        (["--http-server", "nginx"], {}, r"ELF_HTTP_SERVER \(--http-server\)='nginx': .*'granian'"),
    ],
)
def test_bad_settings_are_one_line(
    args: list[str], env: dict[str, str], pattern: str, tiny_model_dir: Path
) -> None:
    _assert_one_line(_run("--model-dir", str(tiny_model_dir), *args, **env), pattern)


def test_debug_log_level_shows_the_traceback(tmp_path: Path) -> None:
    proc = _run("--model-dir", str(tmp_path / "nope"), "--log-level", "debug")
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("elf-serve: error: ")
