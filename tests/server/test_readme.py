"""server/README.md's examples run as written (from the repository root, against a live server
with the shipped model) and answer what the README shows.

The README is the source: its fenced blocks are parsed, not copied here. A shell block that
talks to 127.0.0.1:8000 runs with bash (the address pointed at the live server); the ```json
block after it is what it must answer (every key shown, equal strings and integers, floats to
the digits shown, timings only present). A ```python block runs likewise, its output compared
with the ```text block after it. A block starting with `$ ` is a command and its exact output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.live import LiveServer, elf_serve, live_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "server" / "README.md"
ADDRESS = "http://127.0.0.1:8000"
TOKEN = "readme-admin-token"
VARYING = {"queue_ms", "compute_ms", "total_ms"}  # timings: only their presence is checked


def blocks(text: str) -> list[tuple[str, str]]:
    """Fenced blocks as (info string, body), in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", text, flags=re.M | re.S)


def examples(text: str) -> list[tuple[str, str, str, str]]:
    """(kind, code, expected kind, expected) for each runnable example in the README."""
    found, bs = [], blocks(text)
    for (info, code), (next_info, shown) in zip(bs, [*bs[1:], ("", "")], strict=True):
        if info == "" and "127.0.0.1:8000" in code:
            found.append(("shell", code, next_info, shown))
        elif info == "python" and "127.0.0.1:8000" in code:
            found.append(("python", code, next_info, shown))
        elif info == "" and code.startswith("$ "):
            found.append(("command", code, "", ""))
    return found


def _digits(x: float) -> int:
    """Decimals written: 0.77109 -> 5, -0.0000091 -> 7."""
    return len(f"{x:.15f}".rstrip("0").split(".")[1])


def assert_shown(got: Any, shown: Any, where: str = "") -> None:
    """`got` has everything `shown` has; floats agree to the decimals written in the README."""
    if isinstance(shown, dict):
        assert isinstance(got, dict), where
        for key, value in shown.items():
            assert key in got, f"{where}.{key} missing"
            if key in VARYING:
                assert isinstance(got[key], int | float), f"{where}.{key}"
                continue
            assert_shown(got[key], value, f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(got, list) and len(got) == len(shown), f"{where}: {got} vs {shown}"
        for i, (g, s) in enumerate(zip(got, shown, strict=True)):
            assert_shown(g, s, f"{where}[{i}]")
    elif isinstance(shown, float):
        assert isinstance(got, int | float), where
        assert abs(got - shown) <= 0.6 * 10.0 ** -_digits(shown), f"{where}: {got} vs {shown}"
    else:
        assert got == shown, f"{where}: {got!r} vs {shown!r}"


def _env(server: LiveServer) -> dict[str, str]:
    return {**os.environ, "ELF_ADMIN_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("readme") / "serve.log"
    env = {"ELF_ADMIN_TOKEN": TOKEN, "ELF_WARMUP_ALL_BATCH_SIZES": "false"}
    with live_server(ROOT / "models" / "fashion-mnist-lt", log, **env) as server:
        yield server


def test_readme_has_runnable_examples() -> None:
    kinds = [kind for kind, *_ in examples(README.read_text())]
    assert kinds.count("shell") >= 5 and "python" in kinds and "command" in kinds
    # every file the examples name exists
    for name in re.findall(r"examples/images/[\w.-]+", README.read_text()):
        assert (ROOT / name).is_file(), name


def _run(kind: str, code: str, server: LiveServer) -> str:
    code = code.replace(ADDRESS, server.url).replace("127.0.0.1:8000", server.url[7:])
    cmd = ["bash", "-c", code] if kind == "shell" else [sys.executable, "-c", code]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=_env(server), capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_readme_requests_answer_what_it_shows(readme_server: LiveServer) -> None:
    runnable = [e for e in examples(README.read_text()) if e[0] in ("shell", "python")]
    # The threshold update changes what later requests answer: it runs last.
    runnable.sort(key=lambda e: "thresholds" in e[1])
    for kind, code, shown_kind, shown in runnable:
        out = _run(kind, code, readme_server)
        if shown_kind == "json":
            assert_shown(json.loads(out), json.loads(shown), code.splitlines()[0])
        elif shown_kind == "text":
            assert out.strip() == shown.strip(), code


def test_readme_commands_print_what_it_shows() -> None:
    for _, code, _, _ in [e for e in examples(README.read_text()) if e[0] == "command"]:
        command, *output = code.rstrip("\n").split("\n")
        argv = command.removeprefix("$ ").split()
        argv[0] = elf_serve() if argv[0] == "elf-serve" else argv[0]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ELF_")}
        proc = subprocess.run(
            argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode != 0 and (proc.stdout + proc.stderr).splitlines() == output
