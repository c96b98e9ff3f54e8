"""uvicorn's websockets (sans-I/O) protocol, made to let go of peers that stop reading.

uvicorn waits for a writable socket before every send, close included, and closes a
transport only after its buffer drains, so a client that never reads would hold its
connection forever, even past the keepalive timeout. This subclass lets the close
frame join the backlog without waiting and aborts the transport if the buffer has not
drained within the close timeout. ``jobcast serve`` uses it; plain
``uvicorn --factory`` still works, without this guarantee.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

#: Seconds a closing connection gets to flush its backlog before it is aborted.
CLOSE_GRACE_SECONDS = 2.0


class JobcastWebSocketProtocol(WebSocketsSansIOProtocol):
    async def send(self, message: Any) -> None:
        if message["type"] == "websocket.close" and self.handshake_complete and not self.writable.is_set():
            # Queue the close frame behind the backlog instead of waiting for a reader that never comes.
            self.writable.set()
            try:
                await super().send(message)
            finally:
                self._abort_later()
            return
        await super().send(message)

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        self._abort_later()

    async def run_asgi(self) -> None:
        await super().run_asgi()
        self._abort_later()

    def _abort_later(self) -> None:
        if self.transport.get_write_buffer_size() > 0:
            self.loop.call_later(CLOSE_GRACE_SECONDS, self._abort_if_stuck)

    def _abort_if_stuck(self) -> None:
        if self.transport.get_write_buffer_size() > 0:
            self.transport.abort()
