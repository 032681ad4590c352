"""The load-adaptive operating point: menu from the calibration curve, the decision rule on a
controllable clock, and the wiring into a served model (defaults move, requests' own do not)."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.batching.controller import (
    Controller,
    ControllerConfig,
    ControllerThread,
    DelayWindow,
    Point,
    build_menu,
    curve_points,
)
from tests.server.conftest import ADMIN_TOKEN, files, make_settings

REPO = Path(__file__).resolve().parents[2]
BUNDLED = json.loads((REPO / "models" / "fashion-mnist-lt" / "calibration.json").read_text())
MENU = [
    Point((0.9, 0.9, 0.0), 0.90, 0.80),
    Point((0.8, 0.8, 0.0), 0.895, 0.70),
    Point((0.7, 0.7, 0.0), 0.89, 0.60),
    Point((0.5, 0.5, 0.0), 0.85, 0.40),  # below the default floor (0.90 - 0.01)
]


def test_menu_of_the_bundled_model_goes_down_to_the_floor_only() -> None:
    chosen = tuple(BUNDLED["chosen"]["thresholds"])
    menu = build_menu(curve_points(BUNDLED), chosen, None, 0.01, curve_points(BUNDLED, "curve"))
    base = menu[0]
    assert base.accuracy == pytest.approx(BUNDLED["chosen"]["balanced_accuracy"])
    assert len(menu) >= 3
    assert all(p.accuracy >= base.accuracy - 0.01 for p in menu)
    for a, b in itertools.pairwise(menu):
        assert b.flops_ratio <= a.flops_ratio - 0.01 and b.accuracy <= a.accuracy
    assert build_menu(curve_points(BUNDLED), (0.123, 0.456, 0.0), None, 0.01) == []


def controller(moves: list[tuple[Point, str]], **kw: float) -> Controller:
    config = ControllerConfig(target_s=0.010, min_interval_s=1.0, calm_ticks=3, **kw)
    c = Controller(config, MENU, lambda p, d, _: moves.append((p, d)))
    c.rebase(MENU[0].thresholds)
    return c


def test_overload_moves_cheaper_at_a_bounded_rate_and_stops_at_the_floor() -> None:
    moves: list[tuple[Point, str]] = []
    c = controller(moves)
    assert len(c.menu) == 3  # MENU[3] is under the floor
    t = 100.0
    assert c.step(t, 0.050, 0, 100.0) == "cheaper"
    assert c.step(t + 0.5, 0.050, 0, 100.0) is None  # one move per second at most
    assert c.step(t + 1.0, 0.050, 0, 100.0) == "cheaper"
    assert c.at_floor and c.current == MENU[2]
    assert c.step(t + 5.0, 0.500, 0, 100.0) is None  # never below the floor
    assert [d for _, d in moves] == ["cheaper", "cheaper"]


def test_a_backlog_counts_as_overload_before_any_row_is_answered() -> None:
    c = controller([])
    assert c.step(0.0, None, depth=50, rate=1000.0) == "cheaper"  # 50 ms of work waiting


def test_hysteresis_back_only_after_calm_ticks_and_not_in_the_band() -> None:
    moves: list[tuple[Point, str]] = []
    c = controller(moves)
    c.step(0.0, 0.050, 0, 100.0)
    c.step(1.0, 0.050, 0, 100.0)
    assert c.index == 2
    # Between low x target (5 ms) and the target (10 ms): stay.
    for i in range(10):
        assert c.step(2.0 + i, 0.007, 0, 100.0) is None
    # Calm: back one point after 3 calm ticks, then again 3 ticks (and >= 1 s) later.
    assert [c.step(20.0 + i, 0.001, 0, 100.0) for i in range(3)] == [None, None, "back"]
    assert [c.step(30.0 + i, 0.001, 0, 100.0) for i in range(3)] == [None, None, "back"]
    assert c.index == 0 and c.step(40.0, 0.0, 0, 0.0) is None
    assert [d for _, d in moves] == ["cheaper", "cheaper", "back", "back"]


def test_explicit_floor_and_an_unknown_base() -> None:
    c = Controller(ControllerConfig(target_s=0.01, min_accuracy=0.80), MENU, lambda *_: None)
    c.rebase(MENU[0].thresholds)
    assert c.menu == MENU
    c.rebase((0.3, 0.3, 0.0))
    assert c.menu == [] and c.step(0.0, 1.0, 0, 1.0) is None


@pytest.fixture
def curved_model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny model with a calibration curve of three points (the manifest's first)."""
    d = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, d)
    curve = json.loads((d / "calibration.json").read_text())["curve"]
    base = curve[0]["thresholds"]
    points = [
        {"thresholds": base, "balanced_accuracy": 0.5, "flops_ratio": 0.6},
        {"thresholds": [0.05, 0.05, 0.0], "balanced_accuracy": 0.495, "flops_ratio": 0.4},
        {"thresholds": [0.0, 0.0, 0.0], "balanced_accuracy": 0.3, "flops_ratio": 0.3},
    ]
    (d / "calibration.json").write_text(json.dumps({"curve": points, "pareto": points}))
    return d


def test_served_defaults_move_but_requests_own_choices_do_not(
    curved_model: Path, pngs: list[bytes]
) -> None:
    settings = make_settings(curved_model, latency_target_ms=10.0)
    with TestClient(create_app(settings)) as c:
        model = c.app.state.elf.models.get("tiny")  # type: ignore[attr-defined]
        model.controller.stop()  # this test makes the ticks itself
        ctl = model.controller.controller
        with ctl.lock:
            assert ctl.step(1e9, 1.0, 0, 1.0) == "cheaper"  # stands in for a measured overload
        assert c.get("/v1/models/tiny").json()["thresholds"] == [0.05, 0.05, 0.0]
        text = c.get("/metrics").text
        assert 'elf_operating_point_accuracy{model="tiny"} 0.495' in text
        assert 'elf_operating_point_at_floor{model="tiny"} 1.0' in text
        assert 'elf_operating_point_moves_total{direction="cheaper",model="tiny"} 1.0' in text
        auto = c.post("/v1/classify", files=files(pngs[:8])).json()["results"]
        assert {r["exit"]["index"] for r in auto} == {0}  # 0.05 < any 10-class maximum
        own = c.post("/v1/classify?threshold=1.0", files=files(pngs[:8])).json()["results"]
        assert {r["exit"]["index"] for r in own} == {2}
        final = c.post("/v1/classify?exit=final", files=files(pngs[:8])).json()["results"]
        assert {r["exit"]["index"] for r in final} == {2}
        # A PUT sets a new base: the controller starts again from it.
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        base = list(ctl.menu[0].thresholds)
        r = c.put("/v1/models/tiny/thresholds", json={"thresholds": base}, headers=auth)
        assert r.status_code == 200 and ctl.index == 0 and len(ctl.menu) == 2
        assert 'elf_operating_point_at_floor{model="tiny"} 0.0' in c.get("/metrics").text


def test_the_thread_measures_the_window_on_its_clock() -> None:
    moves: list[tuple[Point, str]] = []
    c = controller(moves)
    window, now = DelayWindow(), [10.0]
    ticker = ControllerThread(c, window, depth=lambda: 0, clock=lambda: now[0])
    for ms in (1, 2, 3, 40, 50, 60, 70, 80, 90, 100):  # p90 = 91 ms > 10 ms
        window.observe(ms / 1e3)
    now[0] = 11.0
    assert ticker.tick() == "cheaper"
    now[0] = 12.5
    assert ticker.tick() is None and window.take(0.9) == (None, 0)  # empty window: no move
