"""uvicorn's httptools protocol with a cap on a request's head and one write per response.

Head cap: httptools buffers a header of any size before the app sees it (a 100 MB header was
read, and answered). Here the bytes received while a request's head is still incomplete are
counted, and past `MAX_HEAD_BYTES` the connection gets a 431 and is closed, before the app is
called. The count is checked after each chunk is parsed, so a chunk that completes the head and
carries body bytes is never refused; at most the cap plus one read (256 KiB) is held. After the
431 the connection reads and drops what the client still sends for up to `LINGER_S`: closing a
socket with unread data resets it, and the client may then never see the answer.

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
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head, self._head_bytes, self._refused = True, 0, False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        real = cast(asyncio.Transport, transport)
        super().connection_made(cast(asyncio.Transport, CoalescingTransport(real, self.loop)))

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            self._send_431()

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # a keep-alive connection's next request starts with its head

    def _send_431(self) -> None:
        msg = f"request line and headers exceed {MAX_HEAD_BYTES} bytes"
        self.logger.warning("%s from %s: connection closed", msg, self.client)
        body = json.dumps({"error": msg}).encode()
        head = (
            b"content-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n" % len(body)
        )
        self._refused = True
        self.transport.write(STATUS_LINE[431] + head + body)
        self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)
