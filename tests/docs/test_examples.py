"""The examples users read run as written and answer what the pages show (tests/docs/pages.py
says which blocks are examples): README.md and every page of the documentation site, against one
live elf-serve with the bundled model, from the repository root. Fields shown are checked one by
one (floats to the digits written); timings and request ids only for their type."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docs.pages import (
    ADDRESS,
    REPO,
    Example,
    all_examples,
    blocks,
    command_lines,
    examples,
    rel,
    user_pages,
)
from tests.server.live import LiveServer, elf_serve, live_server

TOKEN = "docs-admin-token"
VARYING = {"queue_ms", "compute_ms", "total_ms", "id"}  # only their type is checked
CLI = ("elf-train", "elf-export", "elf-serve")


def _digits(x: float) -> int:
    """Decimals written: 0.77109 -> 5, -0.0000091 -> 7."""
    return len(f"{x:.15f}".rstrip("0").split(".")[1])


def assert_shown(got: Any, shown: Any, where: str = "answer") -> None:
    """`got` has everything `shown` has; floats agree to the decimals written."""
    if isinstance(shown, dict):
        assert isinstance(got, dict), where
        for key, value in shown.items():
            assert key in got, f"{where}.{key} is shown but not in the answer"
            if key in VARYING:
                assert isinstance(got[key], type(value) | float), f"{where}.{key}"
            else:
                assert_shown(got[key], value, f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(got, list) and len(got) == len(shown), f"{where}: {got} vs {shown}"
        for i, (g, s) in enumerate(zip(got, shown, strict=True)):
            assert_shown(g, s, f"{where}[{i}]")
    elif isinstance(shown, float):
        assert isinstance(got, int | float), where
        assert abs(got - shown) <= 0.6 * 10.0 ** -_digits(shown), f"{where}: {got} vs {shown}"
    else:
        assert got == shown and type(got) is type(shown), f"{where}: {got!r} vs {shown!r}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("docs") / "elf-serve.log"
    env = {"ELF_ADMIN_TOKEN": TOKEN, "ELF_WARMUP_ALL_BATCH_SIZES": "false"}
    with live_server(REPO / "models" / "fashion-mnist-lt", log, **env) as s:
        yield s


def test_the_readme_shows_a_classify_call_with_its_answer() -> None:
    shown = [e for e in examples(REPO / "README.md") if e.shown_kind == "json"]
    assert any("/v1/classify" in e.code for e in shown)
    assert len(all_examples()) >= 12


def test_every_request_to_the_served_address_is_an_example() -> None:
    """A curl to `make serve`'s address in a block that is not ```shell would never run (unless
    the block starts its own server from the user's data: own-data.md's walk-through)."""
    for page in user_pages():
        for info, code in blocks(page.read_text()):
            starts_a_server = re.search(r"^\s*(make serve|elf-serve)\b", code, re.M)
            if re.search(r"^\s*curl .*127\.0\.0\.1:8000", code, re.M) and not starts_a_server:
                assert info == "shell", f"{rel(page)}: tag this block ```shell:\n{code}"


def test_every_file_an_example_names_exists() -> None:
    for e in [e for e in all_examples() if e.kind != "command"]:  # commands may show errors
        for name in re.findall(r"(?<![/\w])((?:examples|models)/[\w./-]+)", e.code):
            assert (REPO / name).exists(), f"{e.page}: {name} does not exist"


def test_every_link_in_a_readme_stays_in_the_repository() -> None:
    for page in [p for p in user_pages() if p.name == "README.md"]:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path = (page.parent / target).resolve()
            assert path.is_relative_to(REPO) and path.exists(), f"{rel(page)}: link {target}"


def test_the_architecture_page_names_modules_that_exist() -> None:
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`((?:elf_core|training|model_export|server)/[\w/]+\.py)`", text))
    assert len(named) >= 15
    assert not [p for p in sorted(named) if not (REPO / p).is_file()]


def help_text(command: tuple[str, ...]) -> str:
    """`<command> --help`, run in process through the console script's entry point."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts[command[0]].split(":")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        getattr(importlib.import_module(module), func)([*command[1:], "--help"])
    assert exited.value.code == 0, command
    return out.getvalue()


def test_every_flag_the_pages_use_exists() -> None:
    """Each elf-train / elf-export / elf-serve line's flags appear in that command's --help."""
    used: dict[tuple[str, ...], set[str]] = {}
    for page in user_pages():
        for line in command_lines(page.read_text(), CLI):
            words = line.split()
            prog = Path(words[0]).name
            sub = words[1:2] if prog == "elf-export" and words[1:2] and words[1][0] != "-" else []
            flags = {w.split("=", 1)[0] for w in words if w.startswith("--")}
            used.setdefault((prog, *sub), set()).update(flags)
    assert {("elf-train",), ("elf-export",), ("elf-export", "retrofit")} <= set(used)
    for command, flags in used.items():
        text = help_text(command)
        missing = sorted(f for f in flags if not re.search(rf"{re.escape(f)}\b", text))
        assert not missing, f"{' '.join(command)} has no {missing}"


def _run(e: Example, server: LiveServer) -> str:
    code = e.code.replace(ADDRESS, server.url).replace("127.0.0.1:8000", server.url[7:])
    shell = ["bash", "-c", f"set -eo pipefail\n{code}"]
    cmd = shell if e.kind == "shell" else [sys.executable, "-c", code]
    env = {**os.environ, "ELF_ADMIN_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0 and proc.stdout.strip(), f"{e.page}:\n{e.code}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.integration
def test_the_examples_answer_what_the_pages_show(server: LiveServer) -> None:
    assert shutil.which("curl") is not None, "curl: Debian package curl (scripts/setup-system.sh)"
    runnable = sorted(
        (e for e in all_examples() if e.kind != "command"), key=lambda e: e.changes_state
    )
    for e in runnable:
        out = _run(e, server)
        if e.shown_kind == "json":
            where = f"{e.page}: {e.code.splitlines()[0]}"
            assert_shown(json.loads(out), json.loads(e.shown), where)
        elif e.shown_kind == "text":
            assert out.strip() == e.shown.strip(), f"{e.page}:\n{e.code}"
    assert len(runnable) >= 10


@pytest.mark.integration
def test_the_commands_print_what_the_pages_show() -> None:
    commands = [e for e in all_examples() if e.kind == "command"]
    assert commands
    for e in commands:
        command, *output = e.code.rstrip("\n").split("\n")
        argv = command.removeprefix("$ ").split()
        argv[0] = elf_serve() if argv[0] == "elf-serve" else argv[0]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ELF_")}
        proc = subprocess.run(
            argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert (proc.stdout + proc.stderr).splitlines() == output, f"{e.page}: {command}"
