"""MkDocs hook: the server's settings reference, generated from `server.settings.Settings` at
build time, so a new setting appears in the docs without anyone writing it there.

A page asks for the table with the line `<!-- elf:settings-table -->`. Each row: the environment
variable, the `elf-serve` flag (when there is one), the type or choices, the default, and the
description: the field's `description` if it has one, else the comment lines right above the
field in `server/settings.py` (the project's style). A field with neither fails the build.
"""

from __future__ import annotations

import ast
import sys
import typing
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- elf:settings-table -->"


def _import_settings() -> tuple[Any, Path, dict[str, str]]:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    # Imported here: MkDocs loads this file by path, before the repository is importable.
    from server import settings as module  # noqa: PLC0415
    from server.cli import build_parser  # noqa: PLC0415

    flags = {
        a.dest: a.option_strings[0]
        for a in build_parser()._actions
        if a.option_strings and a.option_strings[0].startswith("--")
    }
    return module.Settings, Path(module.__file__), flags


def field_comments(source: str, class_name: str = "Settings") -> dict[str, str]:
    """field name -> the `#` comment lines directly above its line in the class body, joined."""
    lines = source.splitlines()
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    found: dict[str, str] = {}
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        comment: list[str] = []
        i = node.lineno - 2  # the line above, 0-based
        while i >= 0 and lines[i].strip().startswith("#"):
            comment.insert(0, lines[i].strip().lstrip("#").strip())
            i -= 1
        found[node.target.id] = " ".join(comment)
    return found


def _type(annotation: Any) -> str:
    """Choices as `a` | `b`; otherwise the plain type name (Optional dropped)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is typing.Annotated:
        return _type(args[0])
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return _type(rest[0]) if len(rest) == 1 else " or ".join(_type(a) for a in rest)
    return getattr(annotation, "__name__", str(annotation)).replace("SecretStr", "secret")


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int) and value >= 10_000:
        return f"`{value:_}`".replace("_", ",")
    return f"`{value}`"


def settings_rows() -> list[tuple[str, str, str, str, str]]:
    """(variable, flag, type, default, description) per settings field, in declaration order."""
    settings, path, flags = _import_settings()
    comments = field_comments(path.read_text())
    rows = []
    for name, info in settings.model_fields.items():
        text = info.description or comments.get(name, "")
        if not text:
            raise ValueError(f"server/settings.py: setting {name!r} has no description or comment")
        flag = f"`{flags[name]}`" if name in flags else ""
        kind, default = _type(info.annotation), _default(info.default)
        rows.append((f"`ELF_{name.upper()}`", flag, kind, default, text.replace("|", "\\|")))
    return rows


def settings_table() -> str:
    """One row per setting; the flag under its variable, so the description has the room."""
    head = "| setting | type | default | what it does |\n|---|---|---|---|\n"
    body = "".join(
        f"| {var}{'<br>' + flag if flag else ''} | {kind} | {default} | {text} |\n"
        for var, flag, kind, default, text in settings_rows()
    )
    return head + body


def on_page_markdown(markdown: str, **_: Any) -> str:
    """MkDocs event: put the generated table where a page asks for it."""
    if MARKER in markdown:
        return markdown.replace(MARKER, settings_table())
    return markdown
