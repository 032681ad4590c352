"""bench/ drives the other parts through their public names only (import-linter checks who may
import whom, not whether a name is private): no `_private` module or name of elf_core, training,
model_export or server is imported, and no `_private` attribute of such a module is read."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PARTS = {"elf_core", "training", "model_export", "server"}


def _private(dotted: str) -> bool:
    return any(s.startswith("_") and not s.startswith("__") for s in dotted.split("."))


def private_uses(source: str) -> list[str]:
    """`module: name` for every private import or attribute of another part in `source`."""
    found: list[str] = []
    modules: set[str] = set()  # local names bound to modules of the other parts
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in PARTS:
                continue
            for alias in node.names:
                if _private(node.module) or _private(alias.name):
                    found.append(f"{node.module}: {alias.name}")
                modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PARTS:
                    if _private(alias.name):
                        found.append(alias.name)
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and _private(node.attr)
        ):
            found.append(f"{node.value.id}: {node.attr}")
    return found


def test_the_scan_finds_private_uses() -> None:
    source = (
        "from server.api.v1 import _classify, json_response\n"
        "from model_export import _staging\n"
        "import server.api._helpers\n"
        "from server import preprocess\n"
        "preprocess._decode(b'')\n"
        "from bench import _local\n"
    )
    assert private_uses(source) == [
        "server.api.v1: _classify",
        "model_export: _staging",
        "server.api._helpers",
        "preprocess: _decode",
    ]


def test_bench_uses_only_public_names_of_the_other_parts() -> None:
    files = sorted((REPO / "bench").rglob("*.py"))
    assert len(files) > 10
    found = {
        str(f.relative_to(REPO)): uses
        for f in files
        if (uses := private_uses(f.read_text(encoding="utf-8")))
    }
    assert found == {}
