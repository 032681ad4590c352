"""A small reader for Dockerfiles and .dockerignore, enough to check what the images copy.

hadolint is not installable here, so tests/deploy/test_dockerfiles.py checks the rules that matter
for this project with these helpers: instructions joined across line continuations, grouped by
build stage, with ARG defaults substituted; and Docker's .dockerignore matching (Go filepath.Match
patterns relative to the context root, `**` for any number of directories, `!` to re-include,
the last matching line wins, a pattern that matches a directory excludes everything below it).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, COPY, RUN, ...
    args: str  # the rest of the logical line, continuations joined
    line: int  # 1-based line where it starts


@dataclass
class Stage:
    base: str  # the FROM image, ARG defaults substituted
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    global_args: dict[str, str]  # ARGs declared before the first FROM, with their defaults
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def all_args(self) -> dict[str, str]:
        """Every ARG default in the file (global and per stage)."""
        out = dict(self.global_args)
        for stage in self.stages:
            for ins in stage.instructions:
                if ins.keyword == "ARG" and "=" in ins.args:
                    key, value = ins.args.split("=", 1)
                    out[key.strip()] = value.strip().strip('"')
        return out


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Join backslash continuations; drop comments and blank lines. Returns (line, text)."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        out.append((start, " ".join(part for part in buf if part)))
        buf = []
    if buf:
        raise ValueError(f"line {start}: continuation runs past the end of the file")
    return out


def substitute(text: str, args: dict[str, str]) -> str:
    return _VAR.sub(lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def parse_dockerfile(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, text in logical_lines(path.read_text()):
        keyword, _, args = text.partition(" ")
        ins = Instruction(keyword.upper(), args.strip(), number)
        if ins.keyword == "FROM":
            parts = ins.args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=substitute(parts[0], global_args), name=name))
        elif not stages:
            if ins.keyword != "ARG":
                raise ValueError(f"{path}:{number}: only ARG may come before the first FROM")
            key, _, value = ins.args.partition("=")
            global_args[key.strip()] = value.strip().strip('"')
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise ValueError(f"{path}: no FROM")
    return Dockerfile(path, global_args, stages)


@dataclass(frozen=True)
class Copy:
    sources: list[str]
    dest: str
    from_stage: str | None
    line: int


def copies(stage: Stage) -> list[Copy]:
    """COPY and ADD instructions of a stage, flags parsed (JSON or shell form)."""
    out: list[Copy] = []
    for ins in stage.instructions:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        words = json.loads(ins.args) if ins.args.startswith("[") else shlex.split(ins.args)
        flags = {w.split("=", 1)[0]: w.partition("=")[2] for w in words if w.startswith("--")}
        paths = [w for w in words if not w.startswith("--")]
        if len(paths) < 2:
            raise ValueError(f"line {ins.line}: {ins.keyword} needs a source and a destination")
        out.append(Copy(paths[:-1], paths[-1], flags.get("--from"), ins.line))
    return out


def exec_form(args: str) -> list[str] | None:
    """The argument list of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD, else None."""
    return json.loads(args) if args.startswith("[") else None


# .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    # A pattern that names a directory also excludes everything below it.
    return re.compile("".join(out) + "(?:/.*)?")


@dataclass(frozen=True)
class DockerIgnore:
    rules: list[tuple[bool, re.Pattern[str]]]  # (is_exception, pattern)

    @classmethod
    def read(cls, path: Path) -> DockerIgnore:
        rules = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exception = line.startswith("!")
            line = line.removeprefix("!").strip().lstrip("/").removesuffix("/")
            rules.append((exception, _pattern_regex(line)))
        return cls(rules)

    def excluded(self, relative: str) -> bool:
        """Whether a path relative to the context root is left out of the build context."""
        path = relative.strip("/").removeprefix("./")
        result = False
        for exception, regex in self.rules:
            if regex.fullmatch(path):
                result = not exception
        return result
