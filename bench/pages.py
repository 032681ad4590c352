"""The pages under docs/benchmarks/, generated from result JSONs (never by hand)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PAGES = Path("docs/benchmarks")
RESULTS = Path("bench/results")


def load(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return result


def save(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


def header(title: str, result: dict[str, Any], source: Path | str) -> list[str]:
    """Title, what the page is made from, and the run's command, commit and hardware."""
    return [
        f"# {title}",
        "",
        f"Generated from `{source}`; do not edit by hand.",
        "",
        f"- Command: `{result['command']}`",
        f"- Commit: `{result.get('commit', 'not recorded')}`"
        + (f", {result['date'][:10]}" if result.get("date") else ""),
        f"- Hardware: {result.get('hardware_line', 'not recorded')}",
        "",
        *([result["note"], ""] if result.get("note") else []),
    ]


def write(name: str, lines: list[str], pages: Path = PAGES) -> Path:
    pages.mkdir(parents=True, exist_ok=True)
    path = pages / f"{name}.md"
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path


def table(head: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    """A markdown table; `align` holds one character per column: l (left) or r (right)."""
    marks = [":---" if a == "l" else "---:" for a in (align or "l" * len(head))]
    return [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(marks) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
