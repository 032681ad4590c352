"""Static checks of docker/Dockerfile* and .dockerignore (hadolint is not installable here).

They need no engine and name the line at fault; tests/deploy/test_containers.py builds and runs
the images for real. These tests check what a build would copy and run: every COPY source exists
and is inside the build context, the processes run as a non-root user, the health check asks the
readiness endpoint, the serving images carry no torch or training code, and what the CPU image
copies imports the server.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from elf_core.manifest import load_manifest
from tests.deploy.dockerfiles import (
    Dockerfile,
    DockerIgnore,
    copies,
    exec_form,
    parse_dockerfile,
    substitute,
)

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
RUNTIME_IMAGES = ["Dockerfile", "Dockerfile.gpu"]
ALL_IMAGES = [*RUNTIME_IMAGES, "Dockerfile.train"]
BUNDLED_MODEL = REPO / "models" / "fashion-mnist-lt"


def _read(name: str) -> Dockerfile:
    return parse_dockerfile(DOCKER / name)


@pytest.fixture(scope="module")
def ignore() -> DockerIgnore:
    return DockerIgnore.read(REPO / ".dockerignore")


def test_dockerignore_matching(ignore: DockerIgnore) -> None:
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/deploy/x.py",
        "runs/a/ckpt.pt",
        "server/__pycache__/app.cpython-311.pyc",
        "models/m/calibration.png",
        "bench/results/serving.md",
        "docker/Dockerfile",
    ]:
        assert ignore.excluded(path), path
    for path in [
        "pyproject.toml",
        "README.md",
        "server/app.py",
        "elf_core/manifest.py",
        "models/m/manifest.json",
        "models/m/stage_0.onnx",
        "training/cli.py",
    ]:
        assert not ignore.excluded(path), path


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_copy_sources_exist_in_build_context(name: str, ignore: DockerIgnore) -> None:
    df = _read(name)
    args = df.all_args()
    checked = 0
    for stage in df.stages:
        for cp in copies(stage):
            if cp.from_stage is not None:
                assert cp.from_stage in {s.name for s in df.stages}, f"line {cp.line}"
                continue
            for src in cp.sources:
                rel = substitute(src, args).rstrip("/")
                matches = sorted(REPO.glob(rel)) if any(c in rel for c in "*?[") else [REPO / rel]
                assert matches and all(m.exists() for m in matches), f"{name}:{cp.line}: {rel}"
                for m in matches:
                    inside = m.relative_to(REPO).as_posix()
                    assert not ignore.excluded(inside), f"{name}:{cp.line}: {inside} ignored"
                    if m.is_dir():
                        kept = [
                            f
                            for f in m.rglob("*")
                            if f.is_file() and not ignore.excluded(f.relative_to(REPO).as_posix())
                        ]
                        assert kept, f"{name}:{cp.line}: nothing of {inside} reaches the context"
                checked += 1
    assert checked >= 3


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_runs_as_non_root_user(name: str) -> None:
    stage = _read(name).final
    keywords = [ins.keyword for ins in stage.instructions]
    assert "CMD" in keywords or "ENTRYPOINT" in keywords
    start = min(keywords.index(k) for k in ("CMD", "ENTRYPOINT") if k in keywords)
    users = [ins.args.split(":")[0] for ins in stage.instructions if ins.keyword == "USER"]
    before = [ins for ins in stage.instructions[:start] if ins.keyword == "USER"]
    assert before, f"{name}: no USER before CMD/ENTRYPOINT"
    assert users[-1] not in ("root", "0"), f"{name}: final USER is {users[-1]}"
    # The user must exist: created in the same stage by useradd.
    created = " ".join(i.args for i in stage.instructions if i.keyword == "RUN")
    assert re.search(rf"useradd\b.*\b{re.escape(users[-1])}\b", created), created


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_hadolint_rules_that_matter_here(name: str) -> None:
    """Pinned base images (DL3006/DL3007), lean apt layers (DL3015, DL3009), no pip cache."""
    df = _read(name)
    for stage in df.stages:
        image = stage.base if stage.base not in {s.name for s in df.stages} else None
        if image is not None:
            assert ":" in image and not image.endswith(":latest"), f"{name}: FROM {image}"
        for ins in stage.instructions:
            if ins.keyword == "RUN" and "apt-get install" in ins.args:
                assert "--no-install-recommends" in ins.args, f"{name}:{ins.line}"
                assert "rm -rf /var/lib/apt/lists/*" in ins.args, f"{name}:{ins.line}"
            if ins.keyword == "ADD":
                raise AssertionError(f"{name}:{ins.line}: use COPY, not ADD (DL3020)")
    text = df.path.read_text()
    assert "PIP_NO_CACHE_DIR=1" in text or "--no-cache-dir" in text, name


@pytest.mark.parametrize("name", RUNTIME_IMAGES)
def test_healthcheck_asks_readiness_and_cmd_serves_on_8000(name: str) -> None:
    stage = _read(name).final
    checks = [i for i in stage.instructions if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    assert exec_form(checks[0].args.split(" CMD ", 1)[1]) == ["python", "/opt/elf/healthcheck.py"]
    assert any(
        cp.sources == ["docker/healthcheck.py"] and cp.dest == "/opt/elf/healthcheck.py"
        for cp in copies(stage)
    )
    cmd = [i for i in stage.instructions if i.keyword == "CMD"]
    argv = exec_form(cmd[-1].args)
    assert argv is not None and argv[0] == "elf-serve"
    assert argv[argv.index("--port") + 1] == "8000"
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    exposed = [i.args for i in stage.instructions if i.keyword == "EXPOSE"]
    assert exposed == ["8000 8001"]  # HTTP, gRPC


def _env(df: Dockerfile) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in df.final.instructions:
        if ins.keyword == "ENV":
            for key, value in re.findall(r"([A-Z_][A-Z0-9_]*)=(\S+)", ins.args):
                env[key] = value
    return env


@pytest.mark.parametrize(
    ("name", "extra", "providers"),
    [("Dockerfile", "cpu", "cpu"), ("Dockerfile.gpu", "gpu-system", "cuda")],
)
def test_runtime_image_has_no_torch_or_training_code(name: str, extra: str, providers: str) -> None:
    df = _read(name)
    text = " ".join(i.args for s in df.stages for i in s.instructions).lower()
    assert "torch" not in text
    sources = [src for s in df.stages for cp in copies(s) for src in cp.sources]
    assert not any(src.startswith(("training", "tests", "bench")) for src in sources), sources
    assert not any(src.startswith("model_export") for src in sources), sources
    # The torch-free core (manifest, exit rule) goes in whole.
    assert "elf_core/" in sources, sources
    installs = re.findall(r"pip install ([^&]*)", text)
    extras = {
        e
        for line in installs
        for group in re.findall(r"\.\[([a-z,-]+)\]", line)
        for e in group.split(",")
    }
    assert extras == {extra}
    assert _env(df)["ELF_PROVIDERS"] == providers
    assert _env(df)["ELF_MODEL_DIR"] == "/opt/elf/models/fashion-mnist-lt"


def test_bundled_model_files_reach_the_image(ignore: DockerIgnore) -> None:
    """Every file the bundled manifest names (sha256-checked at start-up) is in the context."""
    manifest = load_manifest(BUNDLED_MODEL, verify=True)
    for file in ["manifest.json", *(ref.file for ref in manifest.files())]:
        rel = (BUNDLED_MODEL / file).relative_to(REPO).as_posix()
        assert not ignore.excluded(rel), rel
    for name in RUNTIME_IMAGES:
        dests = {cp.dest for cp in copies(_read(name).final) if cp.from_stage is None}
        assert "/opt/elf/models/fashion-mnist-lt/" in dests


_IMPORT_CHECK = """
import importlib, pkgutil, sys
from importlib.abc import MetaPathFinder

class Block(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "onnx", "onnxscript", "training", "tests"}:
            raise ImportError(f"{name} is not in the serving image")
        return None

sys.meta_path.insert(0, Block())
import server
assert server.__file__.startswith(sys.argv[1]), server.__file__
for mod in pkgutil.walk_packages(server.__path__, "server."):
    importlib.import_module(mod.name)
import elf_core.manifest
assert elf_core.manifest.__file__.startswith(sys.argv[1])
print("ok", len(sys.modules))
"""


def test_what_the_cpu_image_copies_is_enough_to_import_the_server(tmp_path: Path) -> None:
    """Lay out the build stage's COPY sources as the image would, and import every server module
    from there with torch, onnx and the training code blocked."""
    build = _read("Dockerfile").stages[0]
    for cp in copies(build):  # Docker: a directory's contents go into dest; a file into dest/
        for src in cp.sources:
            dest = tmp_path / cp.dest
            if (REPO / src).is_dir():
                shutil.copytree(REPO / src, dest, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / src, dest / Path(src).name)
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK, str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")


def test_healthcheck_reads_the_port_elf_serve_was_started_with() -> None:
    spec = importlib.util.spec_from_file_location("healthcheck", DOCKER / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    base = ["/opt/venv/bin/python", "/opt/venv/bin/elf-serve", "--host", "127.0.0.1"]
    assert module.listen_port([*base, "--port", "41234", ""]) == 41234
    assert module.listen_port([*base, "--port=41235"]) == 41235
    assert module.listen_port(base) == 8000
