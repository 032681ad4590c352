"""The model-directory contract: the name pattern and the loader's refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from elf_core.manifest import MANIFEST_FILE, MODEL_NAME_PATTERN, ManifestError, load_manifest


@pytest.mark.parametrize("name", ["tiny", "fashion-mnist-lt", "m.v2_b", "0abc"])
def test_model_names_that_fit_urls_and_labels(name: str) -> None:
    assert re.fullmatch(MODEL_NAME_PATTERN, name)


@pytest.mark.parametrize("name", ["", "-x", ".hidden", "a/b", "a b", "é"])
def test_model_names_refused(name: str) -> None:
    assert not re.fullmatch(MODEL_NAME_PATTERN, name)


def test_loader_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(ManifestError, match="missing"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("{", encoding="utf-8")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"schema_version": 9}), encoding="utf-8")
    with pytest.raises(ManifestError, match="schema_version 9 is not supported"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"name": "x"}), encoding="utf-8")
    with pytest.raises(ManifestError, match="invalid manifest"):
        load_manifest(tmp_path)
