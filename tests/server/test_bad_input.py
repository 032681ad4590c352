"""Every kind of bad input gets a 4xx JSON error naming the problem, and the next request works."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from server.app import create_app
from server.batching.rows import StageExecutor
from server.settings import Settings
from tests.server.conftest import files, make_settings
from tests.server.images import GARBAGE, encode, grey, png_header_only, truncated

PNG = {"Content-Type": "image/png"}


@pytest.fixture(scope="module")
def strict(tiny_model_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(
        tiny_model_dir, max_body_bytes=50_000, max_image_pixels=10_000, max_images_per_request=4
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _chunks(n: int) -> Iterator[bytes]:
    for _ in range(n):
        yield b"\x00" * 10_000


CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    (
        "garbage",
        "/v1/classify",
        {"content": GARBAGE, "headers": PNG},
        400,
        "not a recognised image",
    ),
    (
        "truncated png",
        "/v1/classify",
        {"content": truncated(encode(grey(64))), "headers": PNG},
        400,
        "truncated or corrupt PNG",
    ),
    (
        "truncated jpeg",
        "/v1/classify",
        {"content": truncated(encode(grey(64), "JPEG")), "headers": {"Content-Type": "image/jpeg"}},
        400,
        "truncated or corrupt JPEG",
    ),
    ("empty body", "/v1/classify", {"content": b"", "headers": PNG}, 400, "empty image"),
    (
        "text content type",
        "/v1/classify",
        {"content": b"hello", "headers": {"Content-Type": "text/plain"}},
        415,
        "unsupported Content-Type 'text/plain'",
    ),
    ("json content type", "/v1/classify", {"json": {"image": "x"}}, 415, "application/json"),
    ("no content type", "/v1/classify", {"content": b"abc"}, 415, "(none)"),
    (
        "body over limit",
        "/v1/classify",
        {"content": b"\x00" * 60_000, "headers": PNG},
        413,
        "exceeds the limit of 50000",
    ),
    (
        "chunked body over limit",
        "/v1/classify",
        {"content": _chunks(8), "headers": PNG},
        413,
        "exceeds the limit of 50000",
    ),
    (
        "too many pixels",
        "/v1/classify",
        {"content": encode(grey(101)), "headers": PNG},
        413,
        "101x101 = 10201 pixels",
    ),
    (
        "decompression bomb",
        "/v1/classify",
        {"content": png_header_only(40_000, 40_000), "headers": PNG},
        413,
        "pixels",
    ),
    (
        "unknown model",
        "/v1/models/nope/classify",
        {"content": encode(grey()), "headers": PNG},
        404,
        "unknown model 'nope'",
    ),
    (
        "bad threshold",
        "/v1/classify?threshold=2",
        {"content": encode(grey()), "headers": PNG},
        422,
        "threshold",
    ),
    (
        "one bad file of three",
        "/v1/classify",
        {"files": files([encode(grey()), GARBAGE, encode(grey())])},
        400,
        "files[1] (img1.png): not a recognised image",
    ),
    (
        "too many files",
        "/v1/classify",
        {"files": files([encode(grey())] * 5)},
        400,
        "Too many files",
    ),
    (
        "text field",
        "/v1/classify",
        {"data": {"file": "hello"}, "files": files([encode(grey())])},
        400,
        "file: a text field",
    ),
    (
        "unexpected field",
        "/v1/classify",
        {"files": files([encode(grey())], field="image")},
        400,
        "unexpected form fields ['image']",
    ),
    (
        "empty form",
        "/v1/classify",
        {"content": b"--xx--\r\n", "headers": {"Content-Type": "multipart/form-data; boundary=xx"}},
        400,
        "no image",
    ),
    (
        "v2 wrong shape",
        "/v2/models/tiny/infer",
        {
            "json": {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 1, 27, 28],
                        "datatype": "FP32",
                        "data": [0.0] * 756,
                    }
                ]
            }
        },
        400,
        "does not match [N, 1, 28, 28]",
    ),
    (
        "v2 wrong dtype",
        "/v2/models/tiny/infer",
        {
            "json": {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 1, 28, 28],
                        "datatype": "INT64",
                        "data": [0] * 784,
                    }
                ]
            }
        },
        400,
        "datatype 'INT64' is not supported",
    ),
    (
        "v2 bad json",
        "/v2/models/tiny/infer",
        {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
        400,
        "JSON",
    ),
    (
        "v2 unknown model",
        "/v2/models/nope/infer",
        {"json": {"inputs": []}},
        404,
        "unknown model 'nope'",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_then_a_good_request(
    strict: TestClient, pngs: list[bytes], case: tuple[str, str, dict[str, Any], int, str]
) -> None:
    _, route, kwargs, status, message = case
    r = strict.post(route, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"] and message in body["error"], body
    good = strict.post("/v1/classify", content=pngs[0], headers=PNG)
    assert good.status_code == 200, good.text


def test_refusals_are_counted_by_reason(strict: TestClient) -> None:
    def count(reason: str) -> float:
        text = strict.get("/metrics").text
        line = [
            x for x in text.splitlines() if x.startswith(f'elf_rejected_total{{reason="{reason}"}}')
        ]
        return float(line[0].split()[-1]) if line else 0.0

    before = {r: count(r) for r in ("bad_image", "body_too_large", "bad_content_type")}
    strict.post("/v1/classify", content=GARBAGE, headers=PNG)
    strict.post("/v1/classify", content=b"\x00" * 60_000, headers=PNG)
    strict.post("/v1/classify", content=b"x", headers={"Content-Type": "text/plain"})
    assert {r: count(r) - before[r] for r in before} == {
        "bad_image": 1,
        "body_too_large": 1,
        "bad_content_type": 1,
    }


def test_a_request_that_can_never_fit_the_queue_is_413_naming_both_settings(
    tiny_model_dir: Path, pngs: list[bytes]
) -> None:
    with pytest.raises(ValidationError, match="ELF_MAX_QUEUE_SIZE=2 is below"):
        make_settings(tiny_model_dir, max_queue_size=2)
    # Settings that skipped validation: the batcher still refuses for good, not with 503.
    valid = make_settings(tiny_model_dir).model_dump()
    settings = Settings.model_construct(**{**valid, "max_queue_size": 2})
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/classify", files=files(pngs[:3]))
        assert r.status_code == 413 and "Retry-After" not in r.headers
        msg = r.json()["error"]
        assert "ELF_MAX_QUEUE_SIZE" in msg and "ELF_MAX_IMAGES_PER_REQUEST" in msg
        assert c.post("/v1/classify", files=files(pngs[:2])).status_code == 200


class SlowStages:
    """The real runner, each stage run 0.5 s late (a lone row is dispatched at once, so the
    queue delay no longer makes a request wait)."""

    def __init__(self, inner: StageExecutor) -> None:
        self.inner = inner
        self.num_stages = inner.num_stages

    def to_device(self, x: np.ndarray) -> Any:
        return self.inner.to_device(x)

    def run(self, k: int, x: Any) -> tuple[Any | None, np.ndarray]:
        time.sleep(0.5)
        return self.inner.run(k, x)

    def merge(self, parts: Sequence[tuple[Any, np.ndarray]]) -> Any:
        return self.inner.merge(parts)


def test_timeout_is_504(tiny_model_dir: Path, pngs: list[bytes]) -> None:
    # Stage runs take 0.5 s; the request gives up after 0.1 s.
    settings = make_settings(tiny_model_dir, request_timeout_s=0.1)
    with TestClient(create_app(settings)) as c:
        batcher = c.app.state.elf.models.get().batcher  # type: ignore[attr-defined]
        batcher.executor = SlowStages(batcher.executor)
        r = c.post("/v1/classify", content=pngs[0], headers=PNG)
        assert r.status_code == 504
        assert r.json() == {"error": "the request timed out waiting for the model"}
        assert 'elf_rejected_total{reason="timeout"} 1.0' in c.get("/metrics").text
