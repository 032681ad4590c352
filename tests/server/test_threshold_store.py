"""ELF_STATE_DIR: the overrides file is written atomically, merged per model, and followed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.threshold_store import StateError, ThresholdStore
from tests.server.conftest import ADMIN_TOKEN, make_settings

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_write_keeps_other_models_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = ThresholdStore(tmp_path)
    store.write("a", "1", [0.5, 0.0])
    store.write("b", "2", [0.25, 0.75, 0.0])
    store.write("a", "1", [0.6, 0.0])
    assert store.read() == {"a": ("1", [0.6, 0.0]), "b": ("2", [0.25, 0.75, 0.0])}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".thresholds.lock", "thresholds.json"]


def test_poll_applies_only_changes(tmp_path: Path) -> None:
    store, seen = ThresholdStore(tmp_path), []
    apply = lambda *args: seen.append(args)  # noqa: E731
    assert not store.poll_once(apply)  # no file yet
    store.write("a", "1", [0.5, 0.0])
    assert store.poll_once(apply) and seen == [("a", "1", [0.5, 0.0])]
    assert not store.poll_once(apply)
    store.write("a", "1", [0.4, 0.0])  # same size, maybe the same mtime: the content differs
    assert store.poll_once(apply) and seen[-1] == ("a", "1", [0.4, 0.0])


@pytest.mark.parametrize("text", ["{", '{"models": {"a": {"thresholds": [0.5]}}}', "[]"])
def test_a_bad_file_is_named(tmp_path: Path, text: str) -> None:
    (tmp_path / "thresholds.json").write_text(text)
    with pytest.raises(StateError, match=r"thresholds\.json"):
        ThresholdStore(tmp_path).read()


def test_put_persists_and_a_new_app_starts_from_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(tiny_model_dir, state_dir=tmp_path)
    with TestClient(create_app(settings)) as c:
        r = c.put("/v1/models/tiny/thresholds", json={"thresholds": [0.3, 0.4]}, headers=AUTH)
        assert r.status_code == 200, r.text
    saved = json.loads((tmp_path / "thresholds.json").read_text())
    assert saved == {"models": {"tiny": {"version": "0.0.1-test", "thresholds": [0.3, 0.4, 0.0]}}}
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/models/tiny").json()["thresholds"] == [0.3, 0.4, 0.0]


def test_overrides_for_another_version_are_ignored(tiny_model_dir: Path, tmp_path: Path) -> None:
    ThresholdStore(tmp_path).write("tiny", "0.0.0-older", [0.3, 0.4, 0.0])
    with TestClient(create_app(make_settings(tiny_model_dir, state_dir=tmp_path))) as c:
        assert c.get("/v1/models/tiny").json()["thresholds"] != [0.3, 0.4, 0.0]


def test_an_invalid_override_stops_the_start(tiny_model_dir: Path, tmp_path: Path) -> None:
    ThresholdStore(tmp_path).write("tiny", "0.0.1-test", [0.3, 0.4, 0.5])  # last must be 0
    with (
        pytest.raises(Exception, match="last exit always answers"),
        TestClient(create_app(make_settings(tiny_model_dir, state_dir=tmp_path))),
    ):
        pass
