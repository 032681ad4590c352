"""The PromQL of the dashboard and of the alert rules, and the metric names it uses."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "elf-serving.json"
RULES = REPO / "docker" / "prometheus" / "rules.yml"

# A metric name, not the middle of a recording rule's level:metric:operations name.
_METRIC = re.compile(r"(?<![\w:])elf_[a-z_]+")
_RECORDED = re.compile(r"\b[a-z_]+:[a-z_]+:[a-z0-9_]+\b")
_HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
# Grafana's variables, replaced by what they stand for when a query is sent to Prometheus itself.
_GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$model": ".*"}


@dataclass(frozen=True)
class Query:
    where: str  # "panel 'Title' A" or "alert ElfX"
    expr: str


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    nested = [q for p in dashboard["panels"] if p["type"] == "row" for q in p.get("panels", [])]
    return panels + nested


def dashboard_queries() -> list[Query]:
    return [
        Query(f"panel {p['title']!r} {t['refId']}", t["expr"])
        for p in data_panels(load_dashboard())
        for t in p["targets"]
    ]


def rule_queries(kind: str) -> list[Query]:
    """kind: 'alert' or 'record'."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [Query(f"{kind} {r[kind]}", r["expr"]) for g in groups for r in g["rules"] if kind in r]


def metric_names(expr: str) -> set[str]:
    """elf_* names in a query, histogram series reduced to their family (elf_x_bucket -> elf_x)."""
    names = set()
    for found in _METRIC.findall(expr):
        suffix = next((s for s in _HISTOGRAM_SERIES if found.endswith(s)), "")
        names.add(found.removesuffix(suffix))
    return names


def recorded_names(expr: str) -> set[str]:
    """Recording-rule series (level:metric:operations) a query reads."""
    return set(_RECORDED.findall(expr))


def concrete(expr: str) -> str:
    """A dashboard query as Prometheus would receive it from Grafana."""
    for variable, value in _GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def exposed_families(metrics_text: str) -> dict[str, str]:
    """Metric families of a Prometheus text exposition: {name: type} from its # TYPE lines.

    Counters are named with `_total` there, as in queries; a labelled metric that has not been
    observed yet still has its TYPE line, so the check does not depend on traffic.
    """
    families = {}
    for line in metrics_text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[:2] == ["#", "TYPE"]:
            families[parts[2]] = parts[3]
    return families
