"""GET /metrics: every DESIGN.md metric, route templates as labels, counters that add up."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from elf_core.manifest import load_manifest
from server.app import create_app
from tests.server.conftest import files, make_settings

METRICS = [
    "elf_requests",
    "elf_images",
    "elf_exits",
    "elf_flops_executed",
    "elf_flops_full",
    "elf_request_duration_seconds",
    "elf_queue_duration_seconds",
    "elf_stage_duration_seconds",
    "elf_batch_size",
    "elf_queue_depth",
    "elf_exit_threshold",
    "elf_rejected",
    "elf_model_info",
]


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(r.text)
        for s in fam.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, lab), v in samples.items()
        if n == name and all(dict(lab).get(k) == want for k, want in labels.items())
    )


def test_metrics_path_is_exact_and_lists_every_metric(client: TestClient) -> None:
    r = client.get("/metrics", follow_redirects=False)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(r.text)}
    assert set(METRICS) <= names
    assert client.get("/metrics/", follow_redirects=False).status_code in (307, 404)


def test_counters_add_up_and_labels_are_templates(
    client: TestClient, pngs: list[bytes], tiny_model_dir: Path
) -> None:
    manifest = load_manifest(tiny_model_dir)
    client.post("/v1/classify", files=files(pngs[:10]))
    client.post("/v1/models/tiny/classify", content=pngs[10], headers={"Content-Type": "image/png"})
    client.post("/v1/classify?exit=final", files=files(pngs[11:14]))
    client.post("/v1/classify", content=b"junk", headers={"Content-Type": "image/png"})  # 400
    client.get("/no/such/path")
    m = scrape(client)
    images = total(m, "elf_images_total", model="tiny")
    assert images == 14
    exits = [total(m, "elf_exits_total", model="tiny", exit=str(k)) for k in range(3)]
    assert sum(exits) == images and exits[2] >= 3
    # The 3 exit=final images ran full.onnx (the backbone's FLOPs), the others the stages.
    staged = [*exits[:2], exits[2] - 3]
    flops = sum(n * e.cumulative_flops for n, e in zip(staged, manifest.exits, strict=True))
    flops += 3 * manifest.flops_full
    assert total(m, "elf_flops_executed_total", model="tiny") == flops
    assert total(m, "elf_flops_full_total", model="tiny") == images * manifest.flops_full
    # Route templates, never raw paths; unknown paths share one label.
    routes = {dict(lab)["route"] for (n, lab) in m if n == "elf_requests_total"}
    assert "/v1/models/{name}/classify" in routes and "/v1/classify" in routes
    assert "unmatched" in routes and not any("tiny" in r or "such" in r for r in routes)
    assert total(m, "elf_requests_total", route="/v1/classify", status="200") == 2
    assert total(m, "elf_requests_total", route="/v1/classify", status="400") == 1
    assert total(m, "elf_request_duration_seconds_count", route="/v1/classify") == 3
    assert total(m, "elf_rejected_total", reason="bad_image") == 1
    # The batcher's view: queue waits per image, stage runs and their batch sizes.
    assert total(m, "elf_queue_duration_seconds_count", model="tiny") == images
    assert total(m, "elf_batch_size_sum", model="tiny", stage="0") == images - 3
    assert total(m, "elf_batch_size_sum", model="tiny", stage="full") == 3
    stage2_rows = total(m, "elf_batch_size_sum", model="tiny", stage="2")
    assert stage2_rows == staged[2]
    assert total(m, "elf_stage_duration_seconds_count", model="tiny", stage="0") >= 1
    assert total(m, "elf_queue_depth", model="tiny") == 0
    info = [lab for (n, lab) in m if n == "elf_model_info"]
    assert info == [
        (("model", "tiny"), ("providers", "CPUExecutionProvider"), ("version", "0.0.1-test"))
    ]
    for k, t in enumerate(manifest.thresholds):
        assert total(m, "elf_exit_threshold", model="tiny", exit=str(k)) == pytest.approx(t)


def test_stage_histograms_have_sub_millisecond_buckets(
    client: TestClient, pngs: list[bytes]
) -> None:
    client.post("/v1/classify", files=files(pngs[:2]))
    m = scrape(client)
    les = {float(dict(lab)["le"]) for (n, lab) in m if n == "elf_stage_duration_seconds_bucket"}
    assert min(les) < 0.001 and len([x for x in les if x < 0.001]) >= 3


def test_each_app_has_its_own_registry(tiny_model_dir: Path, pngs: list[bytes]) -> None:
    with (
        TestClient(create_app(make_settings(tiny_model_dir))) as a,
        TestClient(create_app(make_settings(tiny_model_dir))) as b,
    ):
        a.post("/v1/classify", files=files(pngs[:3]))
        assert total(scrape(a), "elf_images_total") == 3
        assert total(scrape(b), "elf_images_total") == 0


def test_413_on_content_length_is_labelled_with_its_route(tiny_model_dir: Path) -> None:
    with TestClient(create_app(make_settings(tiny_model_dir, max_body_bytes=1000))) as c:
        r = c.post(
            "/v1/models/tiny/classify",
            content=b"\x00" * 2000,
            headers={"Content-Type": "image/png"},
        )
        assert r.status_code == 413
        m = scrape(c)
        assert total(m, "elf_requests_total", route="/v1/models/{name}/classify", status="413") == 1
        assert total(m, "elf_rejected_total", reason="body_too_large") == 1
