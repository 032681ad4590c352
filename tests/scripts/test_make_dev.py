"""`make dev`: torch's CPU build and nothing else, and no root or Debian packages needed.

The torch install is the Makefile's own recipe line (`make -n`), run by pip for real with
--dry-run against two local indexes: a "PyPI" whose torch==2.13.0 has no local version (as
PyPI's CUDA build) and a "CPU index" offering 2.13.0+cpu. pip reads no configuration file here
(PIP_CONFIG_FILE=/dev/null), so a machine's own find-links cannot decide the outcome.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAKE_VENV = REPO / "scripts" / "make-venv.sh"
VERSION = "2.13.0"


def _wheel(index: Path, version: str) -> None:
    """A minimal torch wheel (metadata only) under a PEP 503 index at `index`."""
    folder = index / "torch"
    folder.mkdir(parents=True, exist_ok=True)
    info = f"torch-{version}.dist-info"
    files = {
        "METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n",
        "WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "RECORD": "",
    }
    with zipfile.ZipFile(folder / f"torch-{version}-py3-none-any.whl", "w") as whl:
        for name, text in files.items():
            whl.writestr(f"{info}/{name}", text)
    links = "".join(f'<a href="{w.name}">{w.name}</a>\n' for w in sorted(folder.glob("*.whl")))
    (folder / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")


def _make(*args: str, path: str | None = None) -> list[str]:
    """The lines `make -n ARGS` would run (with PATH, when given)."""
    env = {**os.environ, "PATH": path or os.environ["PATH"]}
    argv = ["make", "-n", "--no-print-directory", "-C", str(REPO), *args]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.splitlines()


def _make_dry_run(*variables: str, path: str | None = None) -> list[str]:
    """`make -n dev`'s lines, every step included, with the given variables (and PATH)."""
    return _make("-B", "dev", "VENV=/nonexistent/venv", "PYTHON=python3", *variables, path=path)


def _torch_line(lines: list[str]) -> list[str]:
    [line] = [ln for ln in lines if "pip install" in ln and "torch==" in ln]
    return shlex.split(line)


def _pip_torch(tmp_path: Path, cpu_index: Path) -> subprocess.CompletedProcess[str]:
    """The Makefile's torch install, as a dry run with a report, against the two indexes."""
    pypi = tmp_path / "pypi"
    _wheel(pypi, VERSION)  # the plain version: PyPI's CUDA build
    argv = _torch_line(_make_dry_run(f"TORCH_INDEX_URL={cpu_index.as_uri()}"))
    assert argv[:2] == ["/nonexistent/venv/bin/python", "-m"]
    report = tmp_path / "report.json"
    argv = [sys.executable, *argv[1:], "--dry-run", "--ignore-installed", "--report", str(report)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": pypi.as_uri()}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


def _installed(tmp_path: Path) -> list[tuple[str, str]]:
    report = json.loads((tmp_path / "report.json").read_text())
    return [(i["metadata"]["version"], i["download_info"]["url"]) for i in report["install"]]


def test_torch_comes_from_the_cpu_index(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu"
    _wheel(cpu, f"{VERSION}+cpu")
    result = _pip_torch(tmp_path, cpu)
    assert result.returncode == 0, result.stderr
    [(version, url)] = _installed(tmp_path)
    assert version == f"{VERSION}+cpu"
    assert url == (cpu / "torch" / f"torch-{VERSION}+cpu-py3-none-any.whl").as_uri()


def test_without_the_cpu_index_it_fails_rather_than_take_pypis_cuda_build(tmp_path: Path) -> None:
    result = _pip_torch(tmp_path, tmp_path / "unreachable")
    assert result.returncode == 1
    assert f"No matching distribution found for torch=={VERSION}+cpu" in result.stderr
    assert not (tmp_path / "report.json").exists()


def test_on_macos_the_pin_has_no_local_version(tmp_path: Path) -> None:
    """macOS wheels (no CUDA build exists there) are named without +cpu on both indexes."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "uname").write_text("#!/bin/sh\necho Darwin\n")
    (bindir / "uname").chmod(0o755)
    argv = _torch_line(_make_dry_run(path=f"{bindir}{os.pathsep}{os.environ['PATH']}"))
    assert argv[-1] == f"torch=={VERSION}"
    assert _torch_line(_make_dry_run())[-1] == f"torch=={VERSION}+cpu"


def test_dev_needs_no_debian_packages() -> None:
    """`make dev` creates the venv and installs; the Debian packages stay with `make test`."""
    lines = _make_dry_run()
    assert not any("setup-system" in ln for ln in lines), lines
    assert lines[0] == "sh scripts/make-venv.sh python3 /nonexistent/venv"
    assert _make("test")[0] == "sh scripts/setup-system.sh"  # first thing `make test` does


def _fake_python(tmp_path: Path, has_ensurepip: bool) -> Path:
    """A python3 that has (or, like Debian's without python3-venv, lacks) ensurepip."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    python = bindir / "python3"
    check = "exit 0" if has_ensurepip else "exit 1"
    python.write_text(
        f'#!/bin/sh\nif [ "$1" = -c ]; then {check}; fi\necho "$@" > {tmp_path / "venv-args"}\n'
    )
    python.chmod(0o755)
    return python


def _make_venv(python: Path, target: Path) -> subprocess.CompletedProcess[str]:
    argv = ["sh", str(MAKE_VENV), str(python), str(target)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_make_venv_without_ensurepip_says_what_to_install(tmp_path: Path) -> None:
    python = _fake_python(tmp_path, has_ensurepip=False)
    result = _make_venv(python, tmp_path / "venv")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"make-venv: error: {python} has no venv/ensurepip; install python3-venv "
        "(Debian/Ubuntu: apt-get install python3-venv)\n"
    )
    assert not (tmp_path / "venv-args").exists()


def test_make_venv_runs_python_m_venv(tmp_path: Path) -> None:
    python = _fake_python(tmp_path, has_ensurepip=True)
    result = _make_venv(python, tmp_path / "venv")
    assert (result.returncode, result.stderr) == (0, "")
    assert (tmp_path / "venv-args").read_text() == f"-m venv {tmp_path / 'venv'}\n"


def test_make_venv_with_no_such_python(tmp_path: Path) -> None:
    result = _make_venv(tmp_path / "no-python", tmp_path / "venv")
    assert result.returncode == 1
    assert result.stderr == (
        f"make-venv: error: {tmp_path / 'no-python'} not found; install Python 3.11 or newer "
        "(or pass PYTHON=...)\n"
    )
