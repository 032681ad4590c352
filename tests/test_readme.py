"""The README's examples run: every `curl` line against a live elf-serve with the bundled model,
and each answer shown in the README (the ```json block after a command) checked field by field
against the live answer. Timings (`*_ms`) and request ids are checked for their type only."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.live import LiveServer, live_server

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MODEL_DIR = REPO / "models" / "fashion-mnist-lt"
DOC_URL = "http://127.0.0.1:8000"  # the README's `make serve` address
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
ANY_VALUE_KEYS = ("id",)


def code_blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(README.read_text())]


def commands(block: str) -> list[str]:
    """The block's curl command lines, with `\\` continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("curl ")]


def examples() -> list[tuple[str, Any]]:
    """(curl command, the answer the README shows for it, or None)."""
    blocks = code_blocks()
    found = []
    for i, (lang, text) in enumerate(blocks):
        cmds = commands(text) if lang in ("", "shell", "sh", "bash") else []
        following = blocks[i + 1] if i + 1 < len(blocks) else ("", "")
        if cmds and following[0] == "json":
            assert len(cmds) == 1, f"a json answer must follow exactly one command: {cmds}"
            found.append((cmds[0], json.loads(following[1])))
        else:
            found += [(c, None) for c in cmds]
    return found


def check_fields(shown: Any, live: Any, where: str = "") -> None:
    """Every field the README shows is in the live answer with that value (floats as printed)."""
    key = where.rsplit(".", 1)[-1]
    if key.endswith("_ms") or key in ANY_VALUE_KEYS:
        assert type(live) is type(shown) or isinstance(live, float), where
    elif isinstance(shown, dict):
        assert isinstance(live, dict), where
        for k, v in shown.items():
            assert k in live, f"{where}.{k} shown in the README, not in the answer"
            check_fields(v, live[k], f"{where}.{k}")
    elif isinstance(shown, list):
        assert isinstance(live, list) and len(live) == len(shown), where
        for i, (s, v) in enumerate(zip(shown, live, strict=True)):
            check_fields(s, v, f"{where}[{i}]")
    elif isinstance(shown, float):
        assert live == pytest.approx(shown, rel=1e-3, abs=5e-4), where
    else:
        assert live == shown and type(live) is type(shown), where


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("readme") / "elf-serve.log"
    with live_server(MODEL_DIR, log, ELF_WARMUP_ALL_BATCH_SIZES="false") as s:
        yield s


def test_readme_has_examples_with_answers() -> None:
    found = examples()
    assert sum(shown is not None for _, shown in found) >= 3


def tracked_readmes() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*README.md"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [REPO / line for line in out.splitlines()]


@pytest.mark.parametrize("readme", tracked_readmes(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_readme_points_outside_the_repository(readme: Path) -> None:
    text = readme.read_text()
    assert "DESIGN.md" not in text, "the design lives in docs/ARCHITECTURE.md"
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):  # markdown links
        if target.startswith(("http://", "https://")):
            continue
        path = (readme.parent / target).resolve()
        assert path.is_relative_to(REPO) and path.exists(), f"{readme}: link {target}"
    for mention in re.findall(r"`(\.\./[^`\s]+)`", text):  # `../x` in prose
        path = (readme.parent / mention).resolve()
        assert path.is_relative_to(REPO) and path.exists(), f"{readme}: {mention}"


def test_every_file_an_example_names_exists() -> None:
    for cmd, _ in examples():
        for word in shlex.split(cmd.replace("$(", " ").replace(")", " ")):
            path = word.split("@", 1)[1] if "@" in word else word
            if path.startswith("examples/") or "@" in word:
                assert (REPO / path).is_file(), f"{cmd}: {path} does not exist"


@pytest.mark.integration
def test_readme_requests_answer_what_the_readme_shows(server: LiveServer) -> None:
    assert shutil.which("curl") is not None, "curl: Debian package curl (scripts/setup-system.sh)"
    ran = 0
    for cmd, shown in examples():
        if DOC_URL not in cmd:
            continue  # the docker compose stack's address: not started here
        live_cmd = cmd.replace(DOC_URL, server.url)
        proc = subprocess.run(
            ["bash", "-c", f"set -o pipefail; {live_cmd}"],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 0 and proc.stdout.strip(), f"{cmd}\n{proc.stderr}"
        if shown is not None:
            check_fields(shown, json.loads(proc.stdout), "answer")
        elif "/metrics" in cmd:
            assert all(line.startswith("elf_exits_total{") for line in proc.stdout.splitlines())
        else:
            assert isinstance(json.loads(proc.stdout), dict), cmd
        ran += 1
    assert ran >= 5


def test_architecture_document_names_modules_that_exist() -> None:
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`((?:elf_core|training|model_export|server)/[\w/]+\.py)`", text))
    assert len(named) >= 15
    assert not [p for p in sorted(named) if not (REPO / p).is_file()]
