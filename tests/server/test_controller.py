"""The load-adaptive operating point: menu from the calibration curve, the decision rule on a
controllable clock, and the wiring into a served model (defaults move, requests' own do not)."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.load.admission import INFERENCE_ROUTES
from server.load.controller import (
    Controller,
    ControllerConfig,
    ControllerThread,
    DelayWindow,
    Point,
    Signal,
    build_menu,
    curve_points,
)
from server.load.in_flight import RequestMonitor
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
    assert build_menu(curve_points(BUNDLED), (0.123, 0.456, 0.1, 0.2, 0.3, 0.0), None, 0.01) == []


def tick(latency_s: float | None, per_s: float = 100.0, refused: int = 0) -> Signal:
    """A tick whose answered requests took `latency_s` (quantile)."""
    return Signal(latency_s=latency_s, answered_per_s=per_s, refused=refused)


def test_a_base_below_the_front_moves_to_cheaper_and_more_accurate_points() -> None:
    base = Point((0.95, 0.95, 0.0), 0.80, 0.90)  # measured, dominated by every MENU point
    menu = build_menu(MENU, base.thresholds, None, 0.01, [base])
    assert menu == [base, *MENU]  # floor 0.79: all of MENU, the cheapest last


def controller(moves: list[tuple[Point, str]]) -> Controller:
    config = ControllerConfig(target_s=0.010, min_interval_s=1.0, calm_ticks=3)
    c = Controller(config, MENU, lambda p, d, _: moves.append((p, d)))
    c.rebase(MENU[0].thresholds)
    return c


def test_overload_moves_cheaper_at_a_bounded_rate_and_stops_at_the_floor() -> None:
    moves: list[tuple[Point, str]] = []
    c = controller(moves)
    assert len(c.menu) == 3  # MENU[3] is under the floor
    t = 100.0
    assert c.step(t, tick(0.050)) == "cheaper"
    assert c.step(t + 0.5, tick(0.050)) is None  # one move per second at most
    assert c.step(t + 1.0, tick(0.050)) == "cheaper"
    assert c.at_floor and c.current == MENU[2]
    assert c.step(t + 5.0, tick(0.500)) is None  # never below the floor
    assert [d for _, d in moves] == ["cheaper", "cheaper"]


@pytest.mark.parametrize(
    "signal",
    [
        Signal(oldest_s=0.050),  # nothing answered yet, one request waiting 50 ms
        Signal(queue_delay_s=0.050),  # the batcher's queue alone
        Signal(latency_s=0.002, oldest_s=0.003, queue_delay_s=0.011),
    ],
)
def test_any_end_to_end_or_queue_figure_over_the_target_is_overload(signal: Signal) -> None:
    assert controller([]).step(0.0, signal) == "cheaper"


def test_under_the_target_everywhere_is_no_overload() -> None:
    c = controller([])
    assert c.step(0.0, Signal(latency_s=0.009, oldest_s=0.009, queue_delay_s=0.009)) is None


def test_hysteresis_back_only_after_calm_ticks_and_not_in_the_band() -> None:
    moves: list[tuple[Point, str]] = []
    c = controller(moves)
    c.step(0.0, tick(0.050))
    c.step(1.0, tick(0.050))
    assert c.index == 2
    # Between low x target (5 ms) and the target (10 ms): stay.
    for i in range(10):
        assert c.step(2.0 + i, tick(0.007)) is None
    # Calm: back one point after 3 calm ticks, then again 3 ticks (and >= 1 s) later.
    assert [c.step(20.0 + i, tick(0.001)) for i in range(3)] == [None, None, "back"]
    assert [c.step(30.0 + i, tick(0.001)) for i in range(3)] == [None, None, "back"]
    assert c.index == 0 and c.step(40.0, tick(None, 0.0)) is None
    assert [d for _, d in moves] == ["cheaper", "cheaper", "back", "back"]


def test_at_the_floor_and_still_over_it_sheds_load_then_lifts_it() -> None:
    moves: list[tuple[Point, str]] = []
    c = controller(moves)  # target 10 ms, low 0.5, 1 s between moves, calm after 3 ticks
    c.step(0.0, tick(0.050, per_s=1000.0))
    assert c.limit is None  # not at the floor yet: a cheaper point first
    c.step(1.0, tick(0.050, per_s=1000.0))
    assert c.at_floor and c.limit is None  # the move to the floor does not shed yet
    # Still over at the floor: admit what 1000 answers/s drain within 5 ms (Little's law).
    c.step(1.25, tick(0.050, per_s=1000.0))
    assert c.limit == 5
    # The limit follows the throughput, smoothed (weight 0.25 per tick): 1000 -> 600 -> 300.
    c.step(1.5, tick(0.050, per_s=600.0))
    assert c.limit == math.ceil(900 * 0.005)
    c.step(1.75, tick(0.050, per_s=0.0))
    assert c.limit == math.ceil(675 * 0.005)
    for i in range(20):
        c.step(2.0 + i, tick(0.050, per_s=0.0))
    assert c.limit == 1  # never below min_limit
    # Under the target but still refusing: the limit stays, grows with the throughput.
    for i in range(20):
        assert c.step(30.0 + i, tick(0.001, per_s=2000.0, refused=2)) is None
    assert c.limit == 10 and c.at_floor  # 2000/s x 5 ms, the smoothing converged
    # Quiet (no refusal, under the target) for calm_ticks ticks: the limit is lifted, and only
    # then the point may move back (the calm count went on meanwhile).
    assert [c.step(60.0 + i, tick(0.001)) for i in range(2)] == [None, None]
    assert c.limit is not None
    assert c.step(62.0, tick(0.001)) == "back"
    assert c.limit is None and [d for _, d in moves] == ["cheaper", "cheaper", "back"]


def test_a_move_away_from_the_floor_lifts_the_limit() -> None:
    c = controller([])
    for t in (0.0, 1.0, 1.5):
        c.step(t, tick(0.050, per_s=200.0))
    assert c.limit == 1
    c.rebase(MENU[0].thresholds)  # a PUT: start again from the new base
    assert c.limit is None and c.index == 0


def test_the_request_monitor_times_requests_and_refuses_beyond_the_limit() -> None:
    now = [0.0]
    m = RequestMonitor(clock=lambda: now[0])
    for key in ("x", "y"):  # two models' controllers: each reads every request
        m.take(key, 0.9)
    a, b = m.admit(), m.admit()
    assert a is not None and b is not None
    now[0] = 0.010
    m.done(a)
    now[0] = 0.030
    latency, answered, refused, oldest, in_flight = m.take("x", 0.9)
    assert (latency, answered, refused, in_flight) == (pytest.approx(0.010), 1, 0, 1)
    assert oldest == pytest.approx(0.030)  # b, still in flight
    m.set_limit("x", 2)
    m.set_limit("y", 1)  # the lowest limit of any model applies
    assert m.limit == 1 and m.admit() is None  # b holds the one place
    m.done(b)
    assert m.admit() is not None
    m.set_limit("y", None)
    assert m.limit == 2
    latency, answered, refused, oldest, in_flight = m.take("x", 0.9)
    assert (latency, answered, refused, in_flight) == (pytest.approx(0.030), 1, 1, 1)
    assert m.take("x", 0.9)[:3] == (None, 0, 0)
    latency, answered, refused, _, _ = m.take("y", 0.9)  # y has not taken since the start
    assert (latency, answered, refused) == (pytest.approx(0.028), 2, 1)  # q90 of 10, 30 ms


def test_no_step_back_into_an_overload_only_the_cheaper_point_carries() -> None:
    moves: list[tuple[Point, str]] = []
    c = controller(moves)  # MENU FLOPs 0.80 -> 0.70 -> 0.60
    overload = Signal(latency_s=0.050, answered_per_s=100.0, busy=1.0)
    for t in (0.0, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5):
        c.step(t, overload)
    assert c.index == 2 and c.limit is not None
    c.limit = None  # (shedding is another test's subject)
    # Calm, but the batcher is busy 75% of the time at FLOPs 0.60: 0.70 would need 87.5%.
    calm = Signal(latency_s=0.001, answered_per_s=100.0, busy=0.75)
    assert all(c.step(10.0 + i, calm) is None for i in range(40))
    assert c.index == 2
    # The load falls (busy 40%): back to 0.70 (47%), then to 0.80 (busy there ~0.47 x 8/7).
    quiet = Signal(latency_s=0.001, answered_per_s=50.0, busy=0.40)
    got = [c.step(60.0 + i, quiet) for i in range(30)]
    assert got.count("back") == 2 and c.index == 0


def test_explicit_floor_and_an_unknown_base() -> None:
    c = Controller(ControllerConfig(target_s=0.01, min_accuracy=0.80), MENU, lambda *_: None)
    c.rebase(MENU[0].thresholds)
    assert c.menu == MENU
    c.rebase((0.3, 0.3, 0.0))
    assert c.menu == [] and c.step(0.0, tick(1.0)) is None and c.limit is None


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
            assert ctl.step(1e9, tick(1.0)) == "cheaper"  # stands in for a measured overload
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
    requests = RequestMonitor(clock=lambda: now[0])
    in_flight: list[int] = []
    ticker = ControllerThread(c, window, requests, clock=lambda: now[0], on_tick=in_flight.append)
    for ms in (1, 2, 3, 40, 50, 60, 70, 80, 90, 100):  # p90 = 91 ms > 10 ms
        window.observe(ms / 1e3)
    now[0] = 11.0
    assert ticker.tick() == "cheaper"
    now[0] = 12.5
    assert ticker.tick() is None and window.take(0.9) == (None, 0, 0.0)  # empty: no move
    # A request admitted and not answered: its age alone is the overload signal.
    token = requests.admit()
    assert token is not None
    now[0] = 13.6
    assert ticker.tick() == "cheaper" and in_flight == [0, 0, 1] and c.at_floor
    # At the floor, still over: the thread hands the controller's limit to the monitor.
    now[0] = 14.0
    ticker.tick()
    assert c.limit == 1 and requests.limit == 1 and requests.admit() is None
    ticker.stop()  # a stopped controller leaves no limit behind
    assert requests.limit is None


def test_at_the_floor_requests_beyond_the_limit_get_503_at_once(
    curved_model: Path, pngs: list[bytes]
) -> None:
    settings = make_settings(curved_model, latency_target_ms=10.0, retry_after_s=3)
    app = create_app(settings)
    # server/load/admission.py counts the inference routes: every POST route of the app but the
    # model repository's (admin calls).
    paths = app.openapi()["paths"].items()
    posts = {p for p, ops in paths if "post" in ops and not p.startswith("/v2/repository/")}
    assert posts == set(INFERENCE_ROUTES)
    with TestClient(app) as c:
        model = c.app.state.elf.models.get("tiny")  # type: ignore[attr-defined]
        model.controller.stop()  # this test makes the ticks itself
        ticker, ctl = model.controller, model.controller.controller
        r = c.post("/v1/classify", files=files(pngs[:2]))
        latency, answered, _, oldest, in_flight = ticker.requests.take("tiny", 0.9)
        assert r.status_code == 200 and answered == 1 and latency is not None and latency > 0
        assert (oldest, in_flight) == (0.0, 0)
        with ctl.lock:
            ctl.step(1e9, tick(1.0))  # to the floor (the menu's second and last point)
            ctl.step(1e9 + 1, tick(1.0, per_s=10.0))  # still over: shed
        assert ctl.limit == 1
        ticker.requests.set_limit("tiny", ctl.limit)  # what a tick does
        held = ticker.requests.admit()  # one request in flight: the limit is reached
        assert held is not None
        r = c.post("/v1/classify", files=files(pngs[:2]))
        assert r.status_code == 503 and r.headers["Retry-After"] == "3"
        assert "overloaded" in r.json()["error"]
        r2 = c.post("/v2/models/tiny/infer", json={"inputs": []})
        assert r2.status_code == 503  # before the body is even looked at
        assert c.get("/v1/models/tiny").status_code == 200  # reads are never refused
        text = c.get("/metrics").text
        assert 'elf_rejected_total{reason="overloaded"} 2.0' in text
        assert 'elf_requests_total{protocol="http",route="/v1/classify",status="503"} 1.0' in text
        v2 = 'protocol="http",route="/v2/models/{name}/infer",status="503"'
        assert "elf_requests_total{" + v2 + "} 1.0" in text
        ticker.requests.done(held)
        assert c.post("/v1/classify", files=files(pngs[:2])).status_code == 200
