"""bench/engine_profile: py-spy's raw stacks grouped per thread and per innermost frame."""

from __future__ import annotations

from bench.engine_profile import parse, summarise

LOOP = "Thread._bootstrap (threading.py:1002);Batcher._loop (server/batching/batcher.py:170)"
MAIN = "<module> (x.py:9);BaseEventLoop.run_until_complete (asyncio/base_events.py:640)"
RAW = "\n".join(
    [
        f"thread (1);{LOOP};Session.run_with_iobinding (onnxruntime/capi/x.py:589) 80",
        f"thread (1);{LOOP};stack (numpy/_core/shape_base.py:465) 5",
        f"thread (1);{LOOP};Batcher._run (server/batching/batcher.py:269) 10",
        f"thread (1);{LOOP};Condition.wait (threading.py:327) 5",
        f"thread (2);{MAIN};EpollSelector.select (selectors.py:468) 30",
        f"thread (2);{MAIN};Batcher.infer (server/batching/batcher.py:134) 10",
        "thread (3);Thread.run (threading.py:982) 7",
    ]
)


def test_samples_are_split_by_thread_and_grouped_by_their_innermost_frame() -> None:
    threads = parse(RAW)
    worker = summarise(threads["batcher"])
    assert worker["samples"] == 100
    assert worker["share"] == {"onnxruntime": 0.8, "python": 0.1, "numpy": 0.05, "waiting": 0.05}
    assert worker["share_of_busy"]["onnxruntime"] == round(80 / 95, 4)
    assert worker["top_self"][0] == ("Session.run_with_iobinding (onnxruntime/capi/x.py:589)", 0.8)
    loop = summarise(threads["event loop"])
    assert loop["samples"] == 40 and loop["share"] == {"waiting": 0.75, "python": 0.25}
