"""``subscribe()``: one project's messages, across reconnects, transports and restarts.

::

    async with subscribe("http://127.0.0.1:8000", "acme") as events:
        async for message in events:
            ...

The subscription keeps the cursor, reconnects with backoff and jitter, resumes from
the cursor, drops transitions it has already delivered, and in ``"auto"`` falls back
from WebSocket to SSE to long-poll when a transport is refused or unreachable.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Literal

import anyio
import httpx

from .answers import auth_headers
from .backoff import Reconnect
from .cursor import Cursor, Message, Tracker
from .endpoint import Endpoint
from .errors import ConnectFailed, ServerUnreachable, StreamLost, TransportError, TransportRefused
from .transports import OPENERS, Connection

Transport = Literal["auto", "ws", "sse", "poll"]

#: the transports each choice tries, in order
CHAINS: dict[str, tuple[str, ...]] = {"auto": ("ws", "sse", "poll"), "ws": ("ws",), "sse": ("sse",), "poll": ("poll",)}

RetryHook = Callable[[TransportError, float], None]
FallbackHook = Callable[[TransportError], None]


class Subscription:
    """The messages of one project: iterate it (once) for dicts of every message type.

    ``cursor`` is the last transition delivered; ``transport`` is the one in use
    (``"ws"``, ``"sse"`` or ``"poll"``), or None between connections.
    """

    def __init__(
        self,
        connection: Connection,
        *,
        transport: Transport = "auto",
        reconnect: Reconnect | None = None,
        on_retry: RetryHook | None = None,
        on_fallback: FallbackHook | None = None,
        cursor: Cursor | None = None,
    ) -> None:
        self.tracker = Tracker(cursor)
        self.transport: str | None = None
        self.reconnect = reconnect or Reconnect()
        self._connection = connection
        self._chain = list(CHAINS[transport])
        self._on_retry = on_retry
        self._on_fallback = on_fallback
        self._refusals: list[TransportRefused] = []
        self._messages: AsyncGenerator[Message, None] | None = None

    def __repr__(self) -> str:
        return f"<Subscription {self._connection.project_id!r} transport={self.transport} cursor={self.cursor}>"

    @property
    def cursor(self) -> Cursor | None:
        return self.tracker.cursor

    def __aiter__(self) -> AsyncGenerator[Message, None]:
        if self._messages is None:
            self._messages = self._follow()
        return self._messages

    async def aclose(self) -> None:
        if self._messages is not None:
            await self._messages.aclose()

    async def _follow(self) -> AsyncGenerator[Message, None]:
        attempt, failing_since = 0, None
        while True:
            try:
                async with contextlib.aclosing(self._connect_once()) as messages:
                    async for message in messages:
                        if message.get("type") == "error":
                            # The server could not serve the stream (the store is down): back off, keep counting.
                            raise StreamLost(self.transport or "stream", _error_text(message))
                        attempt, failing_since = 0, None
                        if self.tracker.accept(message):
                            yield message
            except TransportError as exc:
                self.transport = None
                failing_since = failing_since or time.monotonic()
                self._check_give_up(exc, time.monotonic() - failing_since)
                delay = self.reconnect.delay(attempt)
                attempt += 1
                if self._on_retry is not None:
                    self._on_retry(exc, delay)
                await anyio.sleep(delay)

    def _check_give_up(self, error: TransportError, failing_for: float) -> None:
        base = self._connection.endpoint.base
        if not self.tracker.opened and not self.reconnect.retry_first:
            raise ServerUnreachable(base, error.reason) from error
        if self.reconnect.gives_up(failing_for):
            raise ServerUnreachable(base, f"{error.reason} (gave up after {failing_for:.0f} s)") from error

    async def _connect_once(self) -> AsyncGenerator[Message, None]:
        """The messages of the first transport in the chain that opens; it then goes first."""
        failures: list[TransportError] = []
        for name in list(self._chain):
            opened = False
            try:
                async with contextlib.aclosing(OPENERS[name](self._connection)) as stream:
                    async for message in stream:
                        if not opened:
                            opened = True
                            self._opened(name, failures)
                        yield message
                if opened:
                    raise StreamLost(name, "the stream ended")
                raise ConnectFailed(name, "the stream ended before it opened")
            except TransportError as exc:
                if opened:
                    raise
                self._failed(name, exc)
                failures.append(exc)
        if not self._chain:
            raise self._refusals[-1].refusal
        raise failures[0]

    def _opened(self, name: str, failures: list[TransportError]) -> None:
        self.transport = name
        self._chain.remove(name)
        self._chain.insert(0, name)
        for failure in failures:
            if self._on_fallback is not None:
                self._on_fallback(failure)

    def _failed(self, name: str, error: TransportError) -> None:
        if isinstance(error, TransportRefused):
            self._chain.remove(name)
            self._refusals.append(error)


@contextlib.asynccontextmanager
async def subscribe(
    url: str,
    project_id: str,
    *,
    transport: Transport = "auto",
    cursor: Cursor | None = None,
    reconnect: Reconnect | None = None,
    on_retry: RetryHook | None = None,
    on_fallback: FallbackHook | None = None,
    origin: str | None = None,
    poll_wait: int = 25,
    open_timeout: float = 10.0,
    token: str | None = None,
) -> AsyncIterator[Subscription]:
    """Follow ``project_id`` on the server at ``url`` (``http://host:port``).

    ``transport`` picks WebSocket, SSE or long-poll, or ``"auto"`` for the first that
    works, in that order. ``cursor`` resumes from a previous subscription's cursor.
    ``reconnect`` is the backoff policy. ``on_retry(error, delay)`` is called before
    each reconnect, and ``on_fallback(error)`` for each transport that failed before a
    later one in the chain opened. ``origin`` sets the WebSocket handshake's Origin header, as a browser would.
    ``poll_wait`` is the long-poll's ``wait`` (seconds, 0 to 30). ``token`` is sent as
    ``Authorization: Bearer`` on every transport, for a server that has a secret.
    """
    if transport not in CHAINS:
        raise ValueError(f"transport must be one of {', '.join(CHAINS)}, not {transport!r}")
    endpoint = Endpoint.parse(url)
    async with httpx.AsyncClient(base_url=endpoint.base, headers=auth_headers(token)) as http:
        connection = Connection(
            endpoint, project_id, lambda: subscription.cursor, http, open_timeout, poll_wait, origin, token
        )
        subscription = Subscription(
            connection,
            transport=transport,
            reconnect=reconnect,
            on_retry=on_retry,
            on_fallback=on_fallback,
            cursor=cursor,
        )
        try:
            yield subscription
        finally:
            await subscription.aclose()


def _error_text(message: Message) -> str:
    return f"the server reported {message.get('code')}: {message.get('message')}"
