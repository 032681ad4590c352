"""What users read never names the machine the project was built on: no absolute paths of it, no
words about its load or the sessions that built it, no internal issue numbers. Scanned: README.md,
every README.md in the tree and every Markdown page under docs/ (generated benchmark pages
included); tests/docs/test_site.py scans the built site's pages with the same list."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs.pages import REPO, rel, user_pages

# (pattern, why it is refused)
BUILD_MACHINE_WORDS = [
    (r"(?<![\w.-])/work/", "an absolute path of the build machine"),
    (r"/opt/wheels", "the build machine's wheel folder"),
    (r"(?<![\w.-])/root/", "the build machine's home"),
    (r"\bthis machine\b", "the build machine"),
    (r"\b(?:busy|quiet|loaded|idle|shared) machine\b", "the build machine's state"),
    (r"\bshared \d+-core\b", "the build machine"),
    (r"\bload average\b", "the build machine's load"),
    (r"\bbench[ _]lock\b", "the build machine's benchmark lock"),
    (r"\b(?:this|that|a previous|the next) session\b", "the sessions that built the project"),
    (r"\b(?:run|measured|tried) here\b", "the build machine"),
    (r"\bissue(?:'s)? ?#?\d+", "an internal issue number"),
    (r"\bthe issue's\b", "an internal issue"),
]


def offending(text: str) -> list[str]:
    """Each build-machine word in `text`, with its line."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for pattern, why in BUILD_MACHINE_WORDS:
            for m in re.finditer(pattern, line, re.IGNORECASE):
                found.append(f"line {number}: {m.group(0)!r} ({why}): {line.strip()[:120]}")
    return found


def test_the_scan_finds_what_it_must() -> None:
    bad = "Run in /work/runs/x on the busy machine (load average 12), issue 12, bench lock."
    assert len(offending(bad)) == 5
    assert offending("ONNX Runtime session per stage; -v elf-work:/work; /usr/share/x") == []


@pytest.mark.parametrize("page", user_pages(), ids=rel)
def test_no_page_names_the_build_machine(page: Path) -> None:
    found = offending(page.read_text())
    assert not found, "\n".join(found)


def test_the_scan_covers_the_site_and_the_readme() -> None:
    pages = user_pages()
    assert REPO / "README.md" in pages and REPO / "docs" / "index.md" in pages
    assert len([p for p in pages if p.is_relative_to(REPO / "docs")]) >= 10
