"""What the model repository under ELF_MODEL_DIR holds: model directories by name and version.

Layouts, which one root may mix:
- ELF_MODEL_DIR is itself a model directory (it holds manifest.json): one model, one version;
- `root/<dir>/manifest.json`: a model directory; its name and version are its manifest's;
- `root/<name>/<version>/manifest.json` (Triton's layout): the versions of one model; the two
  directory names must be the manifest's `name` and `version`.
Several directories may hold versions of one name; a (name, version) pair lives in one directory.
Directories whose name starts with "." are skipped (copy a new version there, then rename it in).

Reading the repository parses each manifest.json (no file hashes: a load checks those) and
fingerprints each directory (manifest bytes, and each file's name, size and mtime), so that a
changed directory is told from an unchanged one without reading its model files.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from elf_core.manifest import MANIFEST_FILE, ManifestError, load_manifest


@dataclass(frozen=True)
class VersionDir:
    """One version of a model: its directory and what it held when the repository was read."""

    name: str
    version: str
    directory: Path
    fingerprint: str


@dataclass(frozen=True)
class BrokenDir:
    """A directory that cannot be served, by the model name it belongs to (its manifest's, or its
    place in the layout when the manifest does not parse) and why, in one line."""

    name: str
    directory: Path
    message: str


@dataclass
class RepositoryContents:
    versions: dict[str, dict[str, VersionDir]] = field(default_factory=dict)  # name -> version
    broken: dict[str, list[BrokenDir]] = field(default_factory=dict)  # name -> its broken dirs

    def names(self) -> list[str]:
        return sorted(set(self.versions) | set(self.broken))

    def fingerprints(self, name: str) -> dict[str, str]:
        """What a poll compares: the fingerprint of each directory of `name`."""
        found = {str(v.directory): v.fingerprint for v in self.versions.get(name, {}).values()}
        found |= {str(b.directory): b.message for b in self.broken.get(name, [])}
        return found


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order of versions: part by part, digits as numbers (2 < 10, 1.9 < 1.10), else as text."""
    parts = re.findall(r"\d+|[^\d.\-_+]+", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def newest(versions: Iterable[str], count: int) -> list[str]:
    """The `count` highest versions, oldest first."""
    return sorted(versions, key=version_key)[-count:]


def model_dirs(root: Path) -> list[tuple[Path, tuple[str, str] | None]]:
    """Every directory holding a manifest: `root` itself, or its sub-directories and, in Triton's
    layout, their sub-directories with the (name, version) that their place says."""
    if (root / MANIFEST_FILE).is_file():
        return [(root, None)]
    if not root.is_dir():
        raise ManifestError(f"{root}: model directory does not exist")
    found: list[tuple[Path, tuple[str, str] | None]] = []
    for d in _subdirs(root):
        if (d / MANIFEST_FILE).is_file():
            found.append((d, None))
        else:
            found += [(v, (d.name, v.name)) for v in _subdirs(d) if (v / MANIFEST_FILE).is_file()]
    return found


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def fingerprint(directory: Path) -> str:
    digest = hashlib.sha256((directory / MANIFEST_FILE).read_bytes())
    for p in sorted(directory.iterdir()):
        if p.is_file():
            st = p.stat()
            digest.update(f"\0{p.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return digest.hexdigest()


def read_repository(root: Path) -> RepositoryContents:
    """The repository now; ManifestError only when `root` does not exist."""
    out = RepositoryContents()
    for directory, place in model_dirs(root):
        name = place[0] if place is not None else directory.name  # until the manifest says
        try:
            manifest = load_manifest(directory, verify=False)
            name = manifest.name if place is None else name  # a misplaced one blocks its place
            entry = VersionDir(manifest.name, manifest.version, directory, fingerprint(directory))
            _check_place(entry, place, out)
        except (ManifestError, OSError) as exc:
            message = " ".join(str(exc).split())
            out.broken.setdefault(name, []).append(BrokenDir(name, directory, message))
            continue
        out.versions.setdefault(name, {})[entry.version] = entry
    return out


def _check_place(
    entry: VersionDir, place: tuple[str, str] | None, found: RepositoryContents
) -> None:
    name, version = entry.name, entry.version
    if place is not None and place != (name, version):
        raise ManifestError(
            f"{entry.directory}: its manifest says model {name!r} version {version!r}; in "
            f"<root>/<name>/<version>/ the directories must be named {name}/{version}"
        )
    other = found.versions.get(name, {}).get(version)
    if other is not None:
        raise ManifestError(
            f"{entry.directory}: {name!r} is also used by {other.directory} with the same "
            f"version {version!r}"
        )
