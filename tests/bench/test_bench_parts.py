"""The pure parts of the serving benchmarks, and the wrk Lua script against a local stub server."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.engine import efficiency
from bench.heavy_model import mix_thresholds
from bench.http_report import ratios
from bench.images import load_image_set
from bench.wrk_run import run_wrk, write_list
from elf_core.exits import exit_index, exit_thresholds
from elf_core.flops import exit_rates


def test_mix_thresholds_give_the_requested_exit_mix() -> None:
    rng = np.random.default_rng(0)
    conf = [rng.uniform(0.1, 1.0, 1000) for _ in range(4)]
    mix = (0.3, 0.2, 0.2, 0.3)
    t = mix_thresholds(conf, mix)
    rates = exit_rates(exit_index(np.stack(conf), exit_thresholds(t, 4)), 4)
    assert rates == pytest.approx(list(mix), abs=0.002)


def test_efficiency_is_realised_over_flops_saving() -> None:
    assert efficiency(0.55, 0.5) == pytest.approx(0.9)
    assert efficiency(1.2, 0.5) == pytest.approx(-0.4)
    assert efficiency(0.9, 1.0) is None


def _row(target: str, c: int, rps: float) -> dict[str, object]:
    return {"target": target, "concurrency": c, "throughput_rps": rps}


def test_ratios_compare_a_with_each_baseline() -> None:
    rows = [
        _row("elf-exits", 1, 100.0),
        _row("elf-exits", 8, 420.0),
        _row("fastapi", 1, 100.0),
        _row("fastapi", 8, 200.0),
    ]
    text = "\n".join(ratios("bundled", rows))
    assert "| 1.00x | 2.10x | 2.10x |" in text
    rows[1] = _row("elf-exits", 8, 230.0)
    assert "| 1.00x | 1.15x | 1.15x |" in "\n".join(ratios("bundled", rows))


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((28, 28), value, np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _image_dir(tmp_path: Path, labels: list[int]) -> Path:
    for i in range(len(labels)):
        (tmp_path / f"img{i}.png").write_bytes(_png(10 * i))
    lines = "".join(f"img{i}.png\t{y}\n" for i, y in enumerate(labels))
    (tmp_path / "labels.tsv").write_text(lines)
    return tmp_path


def test_image_sets_load_and_refuse_bad_lines(tmp_path: Path) -> None:
    images = load_image_set(_image_dir(tmp_path, [3, 7]))
    assert images.files == ["img0.png", "img1.png"]
    assert images.labels == [3, 7]
    (tmp_path / "labels.tsv").write_text("img0.png three\n")
    with pytest.raises(ValueError, match="expected 'file label'"):
        load_image_set(tmp_path)
    (tmp_path / "labels.tsv").write_text("missing.png 1\n")
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        load_image_set(tmp_path)


class _Stub(BaseHTTPRequestHandler):
    """Answers class_index 3 to a raw PNG body or a multipart one; 400 to anything else."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ctype = self.headers["Content-Type"]
        ok = (ctype == "image/png" and body.startswith(b"\x89PNG")) or (
            ctype.startswith("multipart/form-data; boundary=")
            and b'name="file"' in body
            and b"\x89PNG" in body
        )
        out = json.dumps({"results": [{"class_index": 3}]}).encode() if ok else b"{}"
        self.send_response(200 if ok else 400)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    _Stub.protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/predict"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.integration
@pytest.mark.parametrize("body", ["raw", "multipart"])
def test_wrk_script_counts_answers_matching_the_labels(
    tmp_path: Path, stub_url: str, body: str
) -> None:
    images = load_image_set(_image_dir(tmp_path, [3, 3, 5, 3]))
    listing = write_list(images, tmp_path / "list.tsv")
    r = run_wrk(stub_url, listing, body, concurrency=2, duration_s=1)
    assert r.requests > 20
    assert r.non200 == 0
    assert r.checked >= r.requests - 2  # requests cut off at the end are not answered
    # Each of the two connections walks the 4 images in turn: 3 of 4 answers are right.
    assert r.accuracy == pytest.approx(0.75, abs=0.05)
    assert 0 < r.latency_ms["p50"] <= r.latency_ms["p99"]
    assert r.wrk_cpu_s > 0
