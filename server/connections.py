"""Connections that have not sent a whole request yet: a deadline for their headers, and a cap on how many wait.

uvicorn times out idle keep-alive connections, but a connection that has sent nothing,
or sends its headers a byte a second (slowloris), is held forever; a thousand of them
use up the file descriptors and lock every real client out. jobcast's HTTP protocol
(uvicorn's h11 protocol, subclassed) gives every request ``--header-timeout`` seconds to
finish its headers, the first request of a connection and each next one on a keep-alive
connection alike, and answers ``408`` and closes when they do not. WebSocket handshakes
are HTTP requests until their headers are complete, so they are covered too.

At most ``--max-pending-connections`` connections may be waiting for their headers at
once; past that the oldest waiting one is closed to make room, and a warning says so
(at most one line a minute, with a count).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .uvicorn_ws import CLOSE_GRACE_SECONDS

logger = logging.getLogger(__name__)

_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def default_max_pending() -> int:
    """Half the process's file descriptors, at most 1000: room is left for real clients and the store."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1000
    return max(16, min(1000, soft // 2))


class ConnectionGuard:
    """One server's waiting connections, oldest first."""

    def __init__(self, header_timeout: float, max_pending: int) -> None:
        self.header_timeout = header_timeout
        self.max_pending = max_pending or default_max_pending()
        self._waiting: dict[GuardedH11Protocol, None] = {}  # insertion order is age

    def wait(self, connection: GuardedH11Protocol) -> None:
        self._waiting[connection] = None
        if len(self._waiting) > self.max_pending:
            oldest = next(iter(self._waiting))
            self.done(oldest)
            oldest.drop()
            logger.warning(
                "%d connections were waiting for their request headers (--max-pending-connections); "
                "closed the oldest to make room",
                self.max_pending,
            )

    def done(self, connection: GuardedH11Protocol) -> None:
        self._waiting.pop(connection, None)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on request headers; ``guard`` is the server's ConnectionGuard."""

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = guard
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_arrived()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self._header_timer is not None and self.conn.their_state is not h11.IDLE:
            self._headers_arrived()  # h11 stays IDLE until a request's headers are complete

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._headers_arrived()
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._await_headers()  # the next request on this keep-alive connection gets the same deadline

    def send_400_response(self, msg: str) -> None:
        """A malformed request (a broken chunked body): answer it once, and drop whatever the app sends later."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            super().send_400_response(msg)
        else:  # the app had begun its answer: a second one cannot follow
            self.transport.close()

    def drop(self) -> None:
        """Close a connection that never finished its headers; abort it if even the 408 cannot drain."""
        self._headers_arrived()
        if not self.transport.is_closing():
            self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()
            self.loop.call_later(CLOSE_GRACE_SECONDS, self._abort_if_stuck)

    def _abort_if_stuck(self) -> None:
        if self.transport.get_write_buffer_size() > 0:  # a peer that does not read: let go of it
            self.transport.abort()

    def _await_headers(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self._guard.header_timeout, self._headers_too_slow)
            self._guard.wait(self)

    def _headers_arrived(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._guard.done(self)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        logger.debug("closing %s: no complete request within %g s", _peer(self.client), self._guard.header_timeout)
        self.drop()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"
