"""uvicorn's httptools protocol with a cap on a request's head and one write per response.

Head cap: httptools buffers a header of any size before the app sees it (a 100 MB header was
read, and answered). Here the bytes received while a request's head is still incomplete are
counted, and past `MAX_HEAD_BYTES` the connection gets a 431 and is closed, before the app is
called. The count is checked after each chunk is parsed, so a chunk that completes the head and
carries body bytes is never refused; at most the cap plus one read (256 KiB) is held. After the
431 the connection reads and drops what the client still sends for up to `LINGER_S`: closing a
socket with unread data resets it, and the client may then never see the answer.

Head timeout: uvicorn times only idle keep-alive connections, from the end of a response; a
connection that never completes a request head (slowloris: a header byte every few seconds, or
nothing at all) would stay open for ever. Here a timer runs from the connection's start, and
from the first byte of each later request head, until the head is complete; when it fires the
connection gets a 408 (or, when nothing arrived, is just closed).

One write per response: uvicorn writes the status line and headers when the app sends
`http.response.start`, and the body when it sends `http.response.body`: two send() calls, two
TCP segments and two wake-ups of the client for one small JSON answer (on loopback the kernel's
TCP work for both ends runs inside send(): the largest single cost on the event loop in a py-spy
profile of a small model, bench/results/http.md). `CoalescingTransport` collects the writes made
in one turn of the event loop and hands them to the socket together at the end of that turn.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_S = 10.0  # the default of ELF_HEAD_TIMEOUT_S
LINGER_S = 2.0


class CoalescingTransport:
    """A transport whose writes of one loop turn reach the socket as one write.

    The pending bytes are flushed by a callback scheduled with the first write of the turn, and
    before anything that ends or inspects the stream (close, write_eof, the buffer size), so
    the order of bytes and of close is that of the calls. Everything else is the real transport.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HeadCappedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, head_timeout_s: float = HEAD_TIMEOUT_S, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head, self._head_bytes, self._refused = True, 0, False
        self._head_timeout_s = head_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        real = cast(asyncio.Transport, transport)
        super().connection_made(cast(asyncio.Transport, CoalescingTransport(real, self.loop)))
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_timer is None:  # the first byte of a keep-alive connection's next head
                self._arm_head_timer()
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            self._send_431()

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self._head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self._head_bytes == 0:  # nothing arrived: no request to answer
            self.transport.close()
            return
        # debug: a slowloris run would otherwise write a line per connection
        self.logger.debug(
            "request head from %s incomplete after %g s", self.client, self._head_timeout_s
        )
        limit = f"{self._head_timeout_s:g} s (ELF_HEAD_TIMEOUT_S)"
        msg = f"the request head did not arrive within {limit}"
        self._refuse(408, msg)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # a keep-alive connection's next request starts with its head

    def _send_431(self) -> None:
        msg = f"request line and headers exceed {MAX_HEAD_BYTES} bytes"
        self.logger.warning("%s from %s: connection closed", msg, self.client)
        self._refuse(431, msg)

    def _refuse(self, status: int, msg: str) -> None:
        """Answer `status` before any app call, and close after the linger."""
        body = json.dumps({"error": msg}).encode()
        head = (
            b"content-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n" % len(body)
        )
        self._refused = True
        self.transport.write(STATUS_LINE[status] + head + body)
        self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)
