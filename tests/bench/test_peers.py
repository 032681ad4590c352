"""The batching peers' shared parts (batch-size log, KServe's batcher stand-in), their venvs'
pins, and the bench's process accounting; KServe and Ray themselves are not installed here."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from bench import peers
from bench.baselines.batch_log import AsyncBatcher, BatchLog, read_batch_sizes
from bench.http import batch_summary
from bench.http_report import limit_line, p99_check
from bench.servers import _processes


def test_async_batcher_answers_each_request_from_batches_of_at_most_max() -> None:
    log = BatchLog(None)
    batcher = AsyncBatcher(lambda xs: xs * 2.0, max_batch_size=4, max_latency_s=0.05, log=log)

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.submit(np.full(3, i, np.float32)) for i in range(10)))

    out = asyncio.run(main())
    for i, row in enumerate(out):
        np.testing.assert_array_equal(row, np.full(3, 2.0 * i, np.float32))
    # All ten are queued before the batcher's task first runs: 4 + 4 + the 2 left.
    assert log.sizes == Counter({4: 2, 2: 1})


def test_async_batcher_fails_every_request_of_a_failed_batch() -> None:
    def boom(xs: np.ndarray) -> np.ndarray:
        raise RuntimeError(f"bad batch of {len(xs)}")

    batcher = AsyncBatcher(boom, max_batch_size=8, max_latency_s=0.01, log=BatchLog(None))

    async def main() -> list[object]:
        jobs = (batcher.submit(np.zeros(2)) for _ in range(3))
        return await asyncio.gather(*jobs, return_exceptions=True)

    errors = asyncio.run(main())
    assert [str(e) for e in errors] == ["bad batch of 3"] * 3


def test_batch_log_round_trip_and_summary(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    assert read_batch_sizes(path) == Counter()
    log = BatchLog(path, period_s=3600)
    for size in (32, 32, 5):
        log.add(size)
    log.write()
    sizes = read_batch_sizes(path)
    assert sizes == Counter({32: 2, 5: 1})
    assert batch_summary(sizes, 32) == {"batches": 3, "mean": 23.0, "max": 32, "batching": True}
    assert batch_summary(Counter({1: 50}), 32)["batching"] is False
    assert batch_summary(Counter({1: 50}), 1)["batching"] is True  # nothing to batch at c=1


def test_peer_locks_pin_every_package_and_carry_no_torch() -> None:
    for peer in peers.PEERS:
        lines = [ln for ln in peers.lock_file(peer).read_text().splitlines() if ln and ln[0] != "#"]
        assert all("==" in ln for ln in lines), peer
        names = {ln.split("==")[0].lower() for ln in lines}
        assert {peer, "onnxruntime", "numpy", "pillow"} <= names
        assert not any(n.startswith(("torch", "nvidia", "onnxruntime-gpu")) for n in names)


def test_peer_venv_with_a_matching_stamp_is_reused(tmp_path: Path) -> None:
    import hashlib  # noqa: PLC0415

    env = tmp_path / "kserve"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text("")
    digest = hashlib.sha256(peers.lock_file("kserve").read_bytes()).hexdigest()
    (env / peers.STAMP).write_text(digest)
    assert peers.python("kserve", tmp_path) == env / "bin" / "python"


def test_processes_counts_descendants_that_left_the_group() -> None:
    """Ray's workers start sessions of their own; the CPU accounting must still find them."""
    code = (
        "import subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'],"
        " start_new_session=True)\n"
        "print(c.pid, flush=True)\n"
        "time.sleep(30)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        try:
            found = _processes(parent.pid)
            assert {parent.pid, child} <= set(found)
            assert found[child][0] == parent.pid  # its ppid
        finally:
            subprocess.run(["kill", str(child)], check=False)
    finally:
        parent.kill()
        parent.wait()


def test_report_judges_p99_and_the_in_process_limit() -> None:
    def row(target: str, c: int, rps: float, p99: float) -> dict[str, object]:
        return {
            "target": target,
            "concurrency": c,
            "throughput_rps": rps,
            "latency_ms": {"p99": p99},
            "flops_saved": 0.5,
        }

    rows = [row("elf-exits", 1, 100, 2.0), row("elf-exits", 8, 300, 9.0)]
    rows += [row("ray", 1, 50, 4.0), row("ray", 8, 100, 6.0)]
    text = "\n".join(p99_check(rows))
    assert "| 0.50 | 1.50 (worse) |" in text
    line = limit_line("bundled", rows, {"batch": 32, "full_images_per_s": 250.0})
    assert "500.0 images/s" in line and "**60%**" in line
    assert limit_line("bundled", rows, None) == ""
    # Each elf-serve variant (here the Granian front end) is judged on its own rows.
    rows += [row("elf-exits-granian", 1, 120, 1.0), row("elf-exits-granian", 8, 400, 7.0)]
    assert "| 0.25 | 1.17 (worse) |" in "\n".join(p99_check(rows, "elf-exits-granian"))
    line = limit_line(
        "bundled", rows, {"batch": 32, "full_images_per_s": 250.0}, "elf-exits-granian"
    )
    assert "(g)'s best, 400.0 req/s at c=8" in line and "**80%**" in line
