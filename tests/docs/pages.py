"""What users read (README.md and the documentation site's pages under docs/), and the examples in
it that a test can run.

A fenced block is an example when it can run here:
- ```shell with the address of `make serve` (http://127.0.0.1:8000): run with bash from the
  repository root against a live server;
- ```python with that address: run with this interpreter;
- ```console starting with `$ `: a command and its exact output.
The ```json (or ```text) block right after a shell or python example is what it must answer.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
ADDRESS = "http://127.0.0.1:8000"
BLOCK = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
RUNNABLE = {"shell": "shell", "python": "python", "console": "command"}


def user_pages() -> list[Path]:
    """README.md, every README.md in the tree, and every Markdown page under docs/."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*README.md", "docs"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found = {REPO / line for line in out.splitlines() if line.endswith(".md")}
    return sorted(found, key=lambda p: (p != REPO / "README.md", str(p)))


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def blocks(text: str) -> list[tuple[str, str]]:
    """Fenced blocks as (info word, body), in order."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(text)]


@dataclass(frozen=True)
class Example:
    page: str
    kind: str  # shell | python | command
    code: str
    shown_kind: str  # json | text | "" (nothing shown)
    shown: str

    @property
    def changes_state(self) -> bool:
        """The threshold update changes later answers: such examples run last."""
        return "-X PUT" in self.code


def examples(path: Path) -> list[Example]:
    found, bs = [], blocks(path.read_text())
    following = [*bs[1:], ("", "")][: len(bs)]
    for (info, code), (next_info, shown) in zip(bs, following, strict=True):
        kind = RUNNABLE.get(info)
        if kind == "command" and code.startswith("$ "):
            found.append(Example(rel(path), kind, code, "", ""))
        elif kind in ("shell", "python") and "127.0.0.1:8000" in code:
            shown_kind = next_info if next_info in ("json", "text") else ""
            found.append(Example(rel(path), kind, code, shown_kind, shown if shown_kind else ""))
    return found


def all_examples() -> list[Example]:
    return [e for page in user_pages() for e in examples(page)]


def command_lines(text: str, programs: tuple[str, ...]) -> list[str]:
    """Lines of non-output blocks that run one of `programs` (continuations joined, comments
    dropped, the brackets of optional parts removed), e.g. `elf-export calibrate --model-dir d`."""
    lines = []
    for info, code in blocks(text):
        if info in ("json", "text", "python"):
            continue
        joined = re.sub(r"\\\n\s*", " ", code)
        for raw in joined.splitlines():
            line = re.sub(r"\s#.*$", "", raw.strip().removeprefix("$ "))
            line = line.replace("[", " ").replace("]", " ")  # optional parts are checked too
            for part in re.split(r"\s*(?:&&|;)\s*", line):
                words = [w.strip("\"'") for w in part.split()]
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value command
                    words.pop(0)
                if words and Path(words[0]).name in programs:
                    lines.append(" ".join(words))
    return lines
