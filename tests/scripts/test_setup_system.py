"""scripts/setup-system.sh and its package list: `make test` installs what the tests use.

The list is checked against the tests themselves (every program they start and every Debian data
directory they read comes from a listed package), and the script's branches run for real: all
installed (no apt-get), missing as root (apt-get update + install of exactly the missing ones, with
a recording apt-get and an `id` that says root or not first on PATH), missing as a normal user
and without apt (one line, exit 1).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "setup-system.sh"
LIST = REPO / "scripts" / "system-packages.txt"
SCANNED = ("tests", "bench", "training", "model_export", "server")
# Programs a fresh clone has by definition (git made the clone; python3 and make run `make test`).
GIVEN = {"git", "python3", "make"}
BASE_PRIORITIES = {"required", "important"}
MISSING = "elf-no-such-package"
NOT_PACKAGES = ("(this venv)", "(absent)")


def listed_packages() -> list[str]:
    names = []
    for line in LIST.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            names.append(fields[0])
    return names


RUNNERS = {"run", "_run", "Popen", "check_output", "check_call", "call", "create_subprocess_exec"}
ARGV_NAMES = {"cmd", "argv", "command"}


def _head(node: ast.expr) -> str | None:
    """ "x" of a literal ["x", ...] or ("x", ...)."""
    if isinstance(node, ast.List | ast.Tuple) and node.elts:
        head = node.elts[0]
        if isinstance(head, ast.Constant) and isinstance(head.value, str):
            return head.value
    return None


def _program_of(node: ast.AST) -> str | None:
    """A program the code may start: which("x"), executable("x"), run(["x", ...]) (any
    subprocess-like call), cmd = ["x", ...]. Names that are no program here are dropped later."""
    if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id in ARGV_NAMES for t in node.targets
    ):
        return _head(node.value)
    if not isinstance(node, ast.Call) or not node.args:
        return None
    fn, first = node.func, node.args[0]
    name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
    if name in ("which", "executable") and isinstance(first, ast.Constant):
        return first.value if isinstance(first.value, str) else None
    return _head(first) if name in RUNNERS else None


def used_programs_and_paths() -> dict[str, set[str]]:
    """Program names and /usr/share paths in the code, with the files that use them."""
    used: dict[str, set[str]] = {}
    for base in SCANNED:
        for path in (REPO / base).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                found = _program_of(node)
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    data_dir = node.value.startswith("/usr/share/") and len(node.value) > 11
                    found = node.value if data_dir else None
                if found:
                    used.setdefault(found, set()).add(str(path.relative_to(REPO)))
    return used


def _owner(targets: list[str]) -> str | None:
    """`dpkg -S` output for the first of `targets` that a Debian package owns."""
    for target in targets:
        # usrmerge: dpkg knows /bin/dash where the file system says /usr/bin/dash.
        for candidate in (target, target.removeprefix("/usr")):
            argv = ["dpkg", "-S", candidate]
            owner = subprocess.run(argv, capture_output=True, text=True, check=False)
            if owner.returncode == 0:
                return owner.stdout
    return None


def debian_package(thing: str) -> tuple[str | None, str]:
    """(package, priority) owning a program on PATH (or in /usr/sbin) or a path; (None, why).

    A name that is no program here is no program (onnxruntime's session.run(["logits"], ...)):
    a test that really started a missing program would fail by itself.
    """
    if thing.startswith("/"):
        if not os.path.exists(thing):
            return "(absent)", ""
        targets = [thing]
    else:
        search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
        local = Path(sys.executable).parent / thing
        if local.exists():
            return "(this venv)", ""
        # Every copy on the path: a machine may shadow the Debian one (a /usr/local/bin/docker
        # client), and a fresh machine then finds the packaged one.
        found = [shutil.which(thing, path=d) for d in search.split(os.pathsep) if d]
        targets = list(dict.fromkeys(os.path.realpath(f) for f in found if f))
        if not targets:
            return "(absent)", ""
    owner = _owner(targets)
    if owner is None:
        return None, f"{' or '.join(targets)} belongs to no Debian package"
    package = owner.split(":", 1)[0].split(",")[0].strip()
    query = ["dpkg-query", "-W", "-f=${Priority}", package]
    priority = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
    return package, priority


def test_every_program_and_data_dir_the_tests_use_is_in_the_list() -> None:
    used = used_programs_and_paths()
    # The scan must see the programs known to be used, or it proves nothing.
    assert {"promtool", "nginx", "docker-compose", "wrk"} <= used.keys(), sorted(used)
    listed = set(listed_packages())
    problems = []
    for thing, files in sorted(used.items()):
        if thing in GIVEN:
            continue
        package, priority = debian_package(thing)
        if package in NOT_PACKAGES or (package is not None and priority in BASE_PRIORITIES):
            continue
        if package is None or package not in listed:
            problems.append(f"{thing} (used in {sorted(files)}): {package or priority}")
    assert not problems, "add to scripts/system-packages.txt: " + "; ".join(problems)


def test_list_is_installed_here_and_has_no_duplicates() -> None:
    names = listed_packages()
    assert len(names) == len(set(names))
    assert {"python3-venv", "prometheus", "nginx", "docker-compose", "wrk"} <= set(names)
    query = ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *names]
    out = subprocess.run(query, capture_output=True, text=True, check=True).stdout
    assert sorted(out.split("\n")[:-1]) == sorted(f"{n} installed" for n in names)


def _fake_system(tmp_path: Path, uid: int) -> tuple[dict[str, str], Path]:
    """An environment whose apt-get records its arguments (one call a line) and succeeds, and
    whose `id -u` says uid (root or not, whoever runs the tests)."""
    bindir, record = tmp_path / "bin", tmp_path / "apt-calls"
    bindir.mkdir()
    for name, body in (("apt-get", f'echo "$*" >> {record}'), ("id", f"echo {uid}")):
        fake = bindir / name
        fake.write_text(f"#!/bin/sh\n{body}\n")
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    return env, record


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = ["sh", str(SCRIPT)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def _package_list(folder: Path, *names: str) -> Path:
    path = folder / "packages.txt"
    path.write_text("# a comment line\n\n" + "".join(f"{n}   # why\n" for n in names))
    return path


@pytest.mark.parametrize("uid", [0, 1000])
def test_all_installed_runs_no_apt_get(tmp_path: Path, uid: int) -> None:
    env, record = _fake_system(tmp_path, uid)
    result = _run(env)  # the real list: every package is installed on this machine
    assert (result.returncode, result.stderr) == (0, "")
    assert not record.exists()


def test_missing_as_root_updates_then_installs_only_the_missing(tmp_path: Path) -> None:
    env, record = _fake_system(tmp_path, 0)
    env["ELF_SYSTEM_PACKAGES"] = str(_package_list(tmp_path, "nginx", MISSING))
    result = _run(env)
    assert result.returncode == 0, result.stderr
    lines = record.read_text().splitlines()
    assert lines == ["update -q", f"install -y -q --no-install-recommends {MISSING}"]


def test_missing_without_root_says_what_to_install_in_one_line(tmp_path: Path) -> None:
    env, record = _fake_system(tmp_path, 1000)
    env["ELF_SYSTEM_PACKAGES"] = str(_package_list(tmp_path, "nginx", MISSING, "wrk"))
    result = _run(env)
    assert result.returncode == 1
    assert result.stderr == (
        "setup-system: error: missing Debian packages; as root run: apt-get update && "
        f"apt-get install -y --no-install-recommends {MISSING}\n"
    )
    assert not record.exists()


def test_no_apt_says_what_to_install_in_one_line(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("sed", "awk", "tr", "dirname", "id"):  # what the script needs, but no apt/dpkg
        found = shutil.which(tool)
        assert found is not None
        (bindir / tool).symlink_to(found)
    env = {"PATH": str(bindir), "ELF_SYSTEM_PACKAGES": str(_package_list(tmp_path, "nginx"))}
    sh = shutil.which("sh")
    assert sh is not None
    argv = [sh, str(SCRIPT)]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr == (
        "setup-system: error: no apt-get/dpkg here; install the equivalents of these Debian "
        "packages: nginx\n"
    )
