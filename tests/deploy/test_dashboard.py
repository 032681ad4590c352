"""The Grafana dashboard and its provisioning; every metric it (and every rule) names is real.

The live test reads `/metrics` of a real elf-serve process (the tiny fixture model) and checks
that each elf_* name in every panel query and every rule is a metric family the server exports,
with histogram series (_bucket/_sum/_count) only on histograms.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy.conftest import LiveServer
from tests.deploy.queries import (
    REPO,
    dashboard_queries,
    data_panels,
    exposed_families,
    load_dashboard,
    metric_names,
    recorded_names,
    rule_queries,
)

PROVISIONING = REPO / "docker" / "grafana" / "provisioning"
DESIGN_METRICS = {
    "elf_requests_total",
    "elf_images_total",
    "elf_exits_total",
    "elf_flops_executed_total",
    "elf_flops_full_total",
    "elf_request_duration_seconds",
    "elf_queue_duration_seconds",
    "elf_stage_duration_seconds",
    "elf_batch_size",
    "elf_queue_depth",
    "elf_exit_threshold",
    "elf_rejected_total",
    "elf_model_info",
}


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) (rate(elf_stage_duration_seconds_bucket"
        '{model=~"$model"}[$__rate_interval]))) / elf_batch_size_count + elf_exits_total'
    )
    assert metric_names(expr) == {"elf_stage_duration_seconds", "elf_batch_size", "elf_exits_total"}
    recorded = "abs(model_exit:elf_exit_share:ratio_rate15m - 1) and elf_images_total"
    assert metric_names(recorded) == {"elf_images_total"}
    assert recorded_names(recorded) == {"model_exit:elf_exit_share:ratio_rate15m"}


def test_recorded_series_read_by_alerts_and_panels_are_recorded() -> None:
    recorded = {q.where.removeprefix("record ") for q in rule_queries("record")}
    for query in dashboard_queries() + rule_queries("alert"):
        assert recorded_names(query.expr) <= recorded, query.where


def test_dashboard_structure() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "elf-serving"
    panels = data_panels(dashboard)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    datasource = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
    model = next(v for v in dashboard["templating"]["list"] if v["name"] == "model")
    assert model["query"]["query"] == "label_values(elf_model_info, model)"


def test_dashboard_covers_the_issue() -> None:
    """Requests/errors, exits, FLOPs saved, p50/p95/p99, queue, batch, stages, thresholds, model."""
    exprs = [q.expr for q in dashboard_queries()]
    used = set().union(*(metric_names(e) for e in exprs))
    assert used >= DESIGN_METRICS
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(
            f"histogram_quantile({quantile}," in e and "elf_request_duration_seconds_bucket" in e
            for e in exprs
        ), quantile
    saved = [e for e in exprs if "elf_flops_executed_total" in e]
    assert saved and all(e.startswith("1 - sum(rate(elf_flops_executed_total") for e in saved)
    assert all("elf_flops_full_total" in e for e in saved)
    assert any('status!~"2..|OK"' in e for e in exprs)  # errors per second (HTTP and gRPC)
    assert any(e.startswith("sum by (exit) (rate(elf_exits_total") for e in exprs)


def test_provisioning_points_at_the_mounted_dashboards() -> None:
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "elf.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    assert f"./docker/grafana/dashboards:{path}:ro" in grafana["volumes"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent == Path(path)
    assert (REPO / "docker/grafana/dashboards" / Path(home).name).is_file()


@pytest.mark.integration
def test_every_queried_metric_is_exported(live_server: LiveServer) -> None:
    response = httpx.get(f"{live_server.url}/metrics", timeout=10)
    assert response.status_code == 200
    families = exposed_families(response.text)
    assert set(families) >= DESIGN_METRICS, sorted(DESIGN_METRICS - set(families))
    queries = dashboard_queries() + rule_queries("alert") + rule_queries("record")
    for query in queries:
        names = metric_names(query.expr)
        for name in names:
            assert name in families, f"{query.where}: {name} is not exported"
        for raw in ("_bucket", "_sum", "_count"):
            for name in names:
                if f"{name}{raw}" in query.expr:
                    assert families[name] == "histogram", f"{query.where}: {name}{raw}"
    assert len(queries) >= 25
