"""uvicorn's httptools protocol with a cap on a request's head (request line and headers).

httptools buffers a header of any size before the app sees it (a 100 MB header was read, and
answered). Here the bytes received while a request's head is still incomplete are counted, and
past `MAX_HEAD_BYTES` the connection gets a 431 and is closed, before the app is called. The
count is checked after each chunk is parsed, so a chunk that completes the head and carries body
bytes is never refused; at most the cap plus one read (256 KiB) is held. After the 431 the
connection reads and drops what the client still sends for up to `LINGER_S`: closing a socket
with unread data resets it, and the client may then never see the answer.
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
LINGER_S = 2.0


class HeadCappedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head, self._head_bytes, self._refused = True, 0, False

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
