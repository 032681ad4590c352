"""Merge a Compose override into its base file the way `docker compose` (2.24+) does, for
Debian's docker-compose 1.29, which cannot read the override's `!reset` and `!override` tags.

Rules (Compose Specification, "Merge and override"): mappings merge key by key, recursively;
any other value in the override replaces the base's; `!reset` removes the key; `!override`
replaces the base's value whole instead of merging it. Variables (${X}) are left for Compose.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Reset:
    pass


@dataclass(frozen=True)
class Override:
    value: Any


class _Loader(yaml.SafeLoader):
    pass


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    return Reset()


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    return Override(loader.construct_scalar(node))  # type: ignore[arg-type]


_Loader.add_constructor("!reset", _reset)
_Loader.add_constructor("!override", _override)


def load(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_Loader)  # a SafeLoader with two more tags


def merge(base: Any, override: Any) -> Any:
    if isinstance(override, Override):
        return override.value
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                out.pop(key, None)
            else:
                out[key] = merge(base.get(key), value)
        return out
    return override


def merged_file(base: Path, override: Path, out: Path) -> Path:
    """base + override written to out, as one plain Compose file."""
    out.write_text(yaml.safe_dump(merge(load(base), load(override)), sort_keys=False))
    return out
