"""uvicorn's websockets (sans-I/O) protocol, made to let go of peers that stop reading.

uvicorn waits for a writable socket before every send, close included, and closes a
transport only after its buffer drains, so a client that never reads would hold its
connection forever, even past the keepalive timeout. This subclass lets the close
frame join the backlog without waiting and aborts the transport if the buffer has not
drained within the close timeout. ``jobcast serve`` uses it; plain
``uvicorn --factory`` still works, without this guarantee.

It also ends a refused handshake (an HTTP answer instead of the upgrade) without the
spurious error uvicorn logs for it, so each refusal leaves exactly one line: jobcast's;
and closes a socket that sends a text frame that is not UTF-8 with 1007 and one line,
where uvicorn logs an error with a traceback for each such frame.

It also offers the app an ASGI extension, ``jobcast.send_text_nowait``: a plain function
that writes at once if the socket is below its high-water mark and returns False
otherwise. The fan-out uses it the way ``websockets.broadcast()`` writes: no task switch
and no await per subscriber, with a queue only for laggards; and better, it writes frames
the fan-out built once for every socket (one ``transport.write`` each, no framing per
socket), unless the socket negotiated compression.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

logger = logging.getLogger(__name__)

#: Seconds a closing connection gets to flush its backlog before it is aborted.
CLOSE_GRACE_SECONDS = 2.0


class Framed(Protocol):
    """What the non-blocking writer takes: the texts, and the same texts as frames without extensions."""

    @property
    def texts(self) -> tuple[bytes, ...]: ...

    @property
    def frame(self) -> bytes: ...


#: The ASGI extension key under which the app finds the non-blocking writer.
SEND_NOWAIT = "jobcast.send_text_nowait"
#: ... and a function telling whether the peer sent the close frame (its code is then the peer's, not a limit's).
PEER_CLOSED = "jobcast.peer_closed"


class _Inbox:
    """What uvicorn's protocol asks of its ``asyncio.Queue`` (``put_nowait``, ``get``, ``empty``) for one
    reader, the app's task: a list and at most one waiter, not a queue's three deques and its Event.
    Ten thousand idle sockets each keep one."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class _Writable:
    """uvicorn's ``writable`` ``asyncio.Event``, with its waiters made only when one waits (a slow reader)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        while not self._set:
            waiter = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            await waiter
        return True


class JobcastWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Memory per idle socket: lighter equivalents of the queue and the event uvicorn makes.
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Writable()  # type: ignore[assignment]

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # the app's task has been created but has not run yet
            scope["extensions"][SEND_NOWAIT] = self.send_text_nowait
            scope["extensions"][PEER_CLOSED] = self.peer_closed

    def peer_closed(self) -> bool:
        return self.conn.close_rcvd is not None and self.conn.close_rcvd_then_sent is not False

    def send_receive_event_to_app(self) -> None:
        """A text frame that is not UTF-8 closes the socket with 1007 and one line, never a traceback."""
        if self.curr_msg_data_type == "text" and not self.close_sent:
            data = b"".join(self.frames)
            try:
                data.decode()
            except UnicodeDecodeError:
                self.frames = []
                logger.warning("closing WebSocket from %s: a text frame that is not UTF-8 (1007)", self._peer())
                self.conn.send_close(1007, "text frames must be UTF-8")
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()

    def _peer(self) -> str:
        client = self.client
        return f"{client[0]}:{client[1]}" if client else "unknown"

    def send_text_nowait(self, out: Framed) -> bool:
        """Write ``out`` (a message or a batch) now, or return False if the socket is full or closing.

        Without extensions the frames are the same bytes for every socket, built once by the caller: one
        write, no framing here. With permessage-deflate each text is compressed for this socket."""
        if not self.handshake_complete or self.initial_response is not None:
            return False
        if not self.writable.is_set() or self.close_sent or self.disconnected or self.transport.is_closing():
            return False
        conn = self.conn
        if conn.state is not State.OPEN:  # the peer's close frame arrived: nothing may follow ours
            return False
        if conn.extensions:
            for text in out.texts:
                conn.send_text(text)
            self.transport.write(b"".join(conn.data_to_send()))
        elif conn.writes:  # a control frame the protocol queued (a pong) goes first
            self.transport.write(b"".join(conn.data_to_send()) + out.frame)
        else:
            self.transport.write(out.frame)
        return True

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
        if message["type"] == "websocket.accept" and self.handshake_complete:
            self.request = self.response = None  # type: ignore[assignment]  # the handshake's headers, no longer needed
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            # A refused handshake is finished once its response is sent. uvicorn would otherwise log
            # "ASGI callable returned without completing handshake" as an error for every refusal.
            self.handshake_complete = True

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
