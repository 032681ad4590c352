"""A light open-loop HTTP/1.1 load generator: requests leave on a fixed schedule, answered or not.

httpx costs ~5-8 ms of client CPU per request, so on 2 shared cores it, not the server, set the
rate it could send. This one writes each request on a kept-alive asyncio connection (a new one
whenever none is idle) and reads the answer with Content-Length framing: tens of microseconds
per request under uvloop. Only for elf-serve's own answers (no chunked encoding).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no answer (connection failed or closed)
    latency_s: float
    body: bytes


class Client:
    """Connections to one host:port, reused while kept alive."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._idle: deque[Conn] = deque()

    async def post(self, path: str, body: bytes, content_type: str) -> Answer:
        t0 = time.perf_counter()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        conn = self._idle.popleft() if self._idle else None
        try:
            if conn is None:
                conn = await asyncio.open_connection(self.host, self.port)
            async with asyncio.timeout(self.timeout_s):
                conn[1].write(head + body)
                status, data, keep = await _read(conn[0])
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            if conn is not None:
                conn[1].close()
            return Answer(0, time.perf_counter() - t0, b"")
        if keep:
            self._idle.append(conn)
        else:
            conn[1].close()
        return Answer(status, time.perf_counter() - t0, data)

    def close(self) -> None:
        while self._idle:
            self._idle.popleft()[1].close()


async def _read(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, connection kept alive) of one response."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = dict(line.split(":", 1) for line in head[1:] if ":" in line)
    headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, body, headers.get("connection", "").lower() != "close"


async def run(
    client: Client, requests: list[tuple[bytes, int, str]], path: str, rate: float
) -> tuple[list[dict[str, Any]], float, float]:
    """Send requests[i] at t0 + i / rate; (one record per request, seconds taken to send them
    all, seconds until the last answer)."""

    async def one(img: tuple[bytes, int, str], at: float) -> dict[str, Any]:
        a = await client.post(path, img[0], img[2])
        shed = a.status == 503 and b"overloaded" in a.body
        correct = a.status == 200 and json.loads(a.body)["results"][0]["class_index"] == img[1]
        return {"status": a.status, "latency": a.latency_s, "correct": correct, "shed": shed,
                "at": at}  # fmt: skip

    t0, tasks = time.perf_counter(), []
    for i, img in enumerate(requests):
        await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one(img, i / rate)))
    sent_in = time.perf_counter() - t0
    out = await asyncio.gather(*tasks)
    return list(out), sent_in, time.perf_counter() - t0
