"""Reading the repository (server/model_repository.py): layouts, version order, refusals; and
the repository calls that several workers cannot honour."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from server.metrics import Metrics
from server.model_repository import newest, read_repository, version_key
from server.preprocess import InputError
from server.registry import ModelRegistry
from server.repository import Repository, check_parameters
from tests.server.conftest import make_settings


def test_versions_order_numbers_as_numbers() -> None:
    assert newest(["1", "10", "2", "9"], 2) == ["9", "10"]
    assert sorted(["1.10", "1.9", "1.9.1"], key=version_key) == ["1.9", "1.9.1", "1.10"]
    assert newest(["0.0.1-test", "0.0.2"], 1) == ["0.0.2"]


def test_layouts_names_versions_and_refusals(tiny_model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(tiny_model_dir, root / "flat")  # tiny 0.0.1-test
    for v in ("1", "2"):
        d = shutil.copytree(tiny_model_dir, root / "tiny" / v)
        raw = json.loads((d / "manifest.json").read_text())
        (d / "manifest.json").write_text(json.dumps({**raw, "version": v}))
    shutil.copytree(tiny_model_dir, root / ".incoming")  # hidden: skipped
    shutil.copytree(tiny_model_dir, root / "other" / "7")  # name and version disagree
    (root / "bad").mkdir()
    (root / "bad" / "manifest.json").write_text("{")
    found = read_repository(root)
    assert sorted(found.versions["tiny"]) == ["0.0.1-test", "1", "2"]
    assert found.versions["tiny"]["2"].directory == root / "tiny" / "2"
    assert sorted(found.broken) == ["bad", "other"]
    assert "not valid JSON" in found.broken["bad"][0].message
    (other,) = found.broken["other"]
    assert "manifest says model 'tiny' version '0.0.1-test'" in other.message
    assert "must be named tiny/0.0.1-test" in other.message
    before = found.fingerprints("tiny")
    (root / "tiny" / "2" / "calibration.json").write_text("{}")  # a changed file
    assert read_repository(root).fingerprints("tiny") != before


def test_several_workers_refuse_load_and_unload(tiny_model_dir: Path) -> None:
    settings = make_settings(tiny_model_dir, workers=2)
    repo = Repository(settings, Metrics(), ModelRegistry())
    for call in (repo.load, repo.unload):
        with pytest.raises(InputError, match=r"with 2 workers .*ELF_REPOSITORY_POLL_S"):
            call("tiny")
    assert [e.state for e in repo.index()] == ["UNAVAILABLE"]  # the index still answers


def test_model_sent_in_the_request_is_refused() -> None:
    check_parameters("unload", ["unload_dependents"])
    with pytest.raises(InputError, match=r"parameters \['config', 'file:1/model.onnx'\]"):
        check_parameters("load", ["config", "file:1/model.onnx"])
