"""docker/prometheus: promtool validates the config and the rules, and unit-tests every alert.

`promtool test rules` replays synthetic series through the real rule engine: each alert must fire
on the traffic it is about and stay quiet on healthy traffic. Annotations are checked separately
(present and templated correctly, which `promtool check rules` parses); the unit tests run on a copy
of the rules without them, so that the expected alerts need not repeat the rendered texts.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "docker" / "prometheus"
ALERTS = {
    "ElfHighErrorRate",
    "ElfHighP99Latency",
    "ElfQueueSaturated",
    "ElfQueueFull",
    "ElfExitDistributionShift",
    "ElfReplicaDown",
    "ElfNoReplica",
    "ElfAuditAgreementLow",
    "ElfOperatingPointAtFloor",
}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe is not None, "promtool is not installed (Debian package prometheus)"
    return subprocess.run(
        [exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def load_rules() -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load((PROM_DIR / "rules.yml").read_text())
    return rules


def test_promtool_check_config_follows_rule_files() -> None:
    proc = promtool("check", "config", str(PROM_DIR / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 1 rule files found" in proc.stdout + proc.stderr


def test_promtool_check_rules() -> None:
    proc = promtool("check", "rules", str(PROM_DIR / "rules.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_explains_itself() -> None:
    alerts = [r for g in load_rules()["groups"] for r in g["rules"] if "alert" in r]
    assert {a["alert"] for a in alerts} == ALERTS
    for alert in alerts:
        notes = alert.get("annotations", {})
        assert len(notes.get("summary", "")) > 10, alert["alert"]
        assert len(notes.get("description", "")) > 60, alert["alert"]
        assert alert["labels"]["severity"] in {"page", "warn", "info"}
        assert "for" in alert, alert["alert"]


def _series(name: str, values: str) -> dict[str, str]:
    return {"series": name, "values": values}


def _healthy(minutes: int) -> list[dict[str, str]]:
    """10 images/s, all answered 200 in under 10 ms, 70% at exit 0, one replica up."""
    n = str(minutes)
    latency = 'elf_request_duration_seconds_bucket{route="/v1/classify",le="%s"}'
    return [
        _series('elf_requests_total{route="/v1/classify",status="200"}', f"0+600x{n}"),
        _series(latency % "0.01", f"0+600x{n}"),
        _series(latency % "+Inf", f"0+600x{n}"),
        _series('elf_queue_duration_seconds_bucket{model="m",le="0.005"}', f"0+600x{n}"),
        _series('elf_queue_duration_seconds_bucket{model="m",le="+Inf"}', f"0+600x{n}"),
        _series('elf_rejected_total{reason="queue_full",instance="a"}', f"0+0x{n}"),
        # Bad client input is rejected too, and must not look like saturation.
        _series('elf_rejected_total{reason="bad_image",instance="a"}', f"0+30x{n}"),
        _series('elf_images_total{model="m"}', f"0+600x{n}"),
        _series('elf_exits_total{model="m",exit="0"}', f"0+420x{n}"),
        _series('elf_exits_total{model="m",exit="1"}', f"0+180x{n}"),
        _series('up{job="elf-server",instance="10.0.0.2:8000"}', f"1+0x{n}"),
    ]


def _quiet(minutes: int) -> dict[str, Any]:
    """Healthy traffic for `minutes`; no alert fires at the end."""
    at = f"{minutes - 20}m"
    return {
        "interval": "1m",
        "input_series": _healthy(minutes),
        "alert_rule_test": [
            {"eval_time": at, "alertname": a, "exp_alerts": []} for a in sorted(ALERTS)
        ],
    }


def _broken() -> dict[str, Any]:
    """5xx, slow requests, long queues, rejections and a dead replica, for 60 minutes."""
    series = [
        _series('elf_requests_total{route="/v1/classify",status="200"}', "0+600x60"),
        _series('elf_requests_total{route="/v1/classify",status="500"}', "0+60x60"),
        # 10% under 100 ms, the rest under 1 s: p99 ~ 1 s.
        _series('elf_request_duration_seconds_bucket{route="/v1/classify",le="0.1"}', "0+66x60"),
        _series('elf_request_duration_seconds_bucket{route="/v1/classify",le="1"}', "0+660x60"),
        _series('elf_request_duration_seconds_bucket{route="/v1/classify",le="+Inf"}', "0+660x60"),
        _series('elf_queue_duration_seconds_bucket{model="m",le="0.005"}', "0+60x60"),
        _series('elf_queue_duration_seconds_bucket{model="m",le="1"}', "0+600x60"),
        _series('elf_queue_duration_seconds_bucket{model="m",le="+Inf"}', "0+600x60"),
        _series('elf_rejected_total{reason="queue_full",instance="a"}', "0+30x60"),
        _series('up{job="elf-server",instance="10.0.0.2:8000"}', "0+0x60"),
    ]
    page, warn = {"severity": "page"}, {"severity": "warn"}
    expected = {
        "ElfHighErrorRate": [page],
        "ElfHighP99Latency": [{**warn, "route": "/v1/classify"}],
        "ElfQueueSaturated": [{**warn, "model": "m"}],
        "ElfQueueFull": [{**warn, "reason": "queue_full", "instance": "a"}],
        "ElfReplicaDown": [{**page, "job": "elf-server", "instance": "10.0.0.2:8000"}],
        "ElfNoReplica": [page],
    }
    return {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            {
                "eval_time": "40m",
                "alertname": name,
                "exp_alerts": [{"exp_labels": labels} for labels in labels_list],
            }
            for name, labels_list in expected.items()
        ],
    }


def _exit_shift() -> dict[str, Any]:
    """A day at 70/30 over exits 0/1, then two hours at 30/70: the 15-minute share moves."""
    day, shifted = 24 * 60, 120
    name = "ElfExitDistributionShift"
    return {
        "interval": "1m",
        "input_series": [
            _series('elf_images_total{model="m"}', f"0+600x{day + shifted}"),
            _series(
                'elf_exits_total{model="m",exit="0"}',
                f"0+420x{day} {420 * day + 180}+180x{shifted - 1}",
            ),
            _series(
                'elf_exits_total{model="m",exit="1"}',
                f"0+180x{day} {180 * day + 420}+420x{shifted - 1}",
            ),
        ],
        "alert_rule_test": [
            {"eval_time": f"{day - 60}m", "alertname": name, "exp_alerts": []},
            {
                "eval_time": f"{day + shifted}m",
                "alertname": name,
                "exp_alerts": [
                    {"exp_labels": {"severity": "info", "model": "m", "exit": e}} for e in "01"
                ],
            },
        ],
    }


def _audit_drift() -> dict[str, Any]:
    """100 audits/min at exit 0, expected 0.97: 30 min agreeing 97%, then 30 min 80%."""
    name = "ElfAuditAgreementLow"
    return {
        "interval": "1m",
        "input_series": [
            _series('elf_audit_expected_agreement{model="m",exit="0"}', "0.97+0x60"),
            _series('elf_audit_expected_agreement{model="m",exit="1"}', "0.95+0x60"),
            _series('elf_audit_images_total{model="m",exit="0"}', "0+100x60"),
            _series('elf_audit_agree_total{model="m",exit="0"}', "0+97x30 2990+80x29"),
            # Exit 1 agrees as expected throughout, and too rarely audited to count anyway.
            _series('elf_audit_images_total{model="m",exit="1"}', "0+1x60"),
            _series('elf_audit_agree_total{model="m",exit="1"}', "0+0x60"),
        ],
        "alert_rule_test": [
            {"eval_time": "29m", "alertname": name, "exp_alerts": []},
            {
                "eval_time": "60m",
                "alertname": name,
                "exp_alerts": [{"exp_labels": {"severity": "warn", "model": "m", "exit": "0"}}],
            },
        ],
    }


def _at_floor() -> dict[str, Any]:
    """Worker a sits at the floor for 20 minutes, worker b leaves it after 3."""
    name = "ElfOperatingPointAtFloor"
    return {
        "interval": "1m",
        "input_series": [
            _series('elf_operating_point_at_floor{model="m",instance="a",pid="1"}', "0 1+0x20"),
            _series('elf_operating_point_at_floor{model="m",instance="b",pid="2"}', "0 1 1 1 0x17"),
        ],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": name, "exp_alerts": []},
            {
                "eval_time": "15m",
                "alertname": name,
                "exp_alerts": [{"exp_labels": {"severity": "warn", "model": "m", "instance": "a"}}],
            },
        ],
    }


@pytest.fixture
def bare_rules(tmp_path: Path) -> Path:
    rules = load_rules()
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def _grpc_failing() -> dict[str, Any]:
    """gRPC calls failing as UNAVAILABLE next to healthy HTTP: the error-rate alert fires;
    refusals of bad input (INVALID_ARGUMENT) do not count."""
    method = "/inference.GRPCInferenceService/ModelInfer"
    series = [
        _series('elf_requests_total{route="/v1/classify",status="200"}', "0+600x60"),
        _series(f'elf_requests_total{{route="{method}",status="OK"}}', "0+300x60"),
        _series(f'elf_requests_total{{route="{method}",status="INVALID_ARGUMENT"}}', "0+300x60"),
        _series(f'elf_requests_total{{route="{method}",status="UNAVAILABLE"}}', "0+30x60"),
    ]
    return {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": "40m", "alertname": "ElfHighErrorRate",
             "exp_alerts": [{"exp_labels": {"severity": "page"}}]},
        ],
    }  # fmt: skip


def test_alerts_fire_on_trouble_and_not_on_healthy_traffic(bare_rules: Path) -> None:
    tests = {
        "rule_files": [bare_rules.name],
        "evaluation_interval": "1m",
        "tests": [
            _quiet(120),
            _broken(),
            _grpc_failing(),
            _exit_shift(),
            _audit_drift(),
            _at_floor(),
        ],
    }
    spec = bare_rules.parent / "rules_test.yml"
    spec.write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = promtool("test", "rules", spec.name, cwd=spec.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
