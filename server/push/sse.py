"""The Server-Sent Events transport: ``text/event-stream`` of the same messages; I/O only.

Transitions and snapshots carry ``id: epoch:seq``, so a browser's EventSource resumes by
itself with ``Last-Event-ID``. The stream ends when the token expires, the subscriber
falls behind, or the server shuts down.
"""

from __future__ import annotations

import contextlib
import time

import anyio
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from .. import access
from ..auth import Grant
from ..channel import Subscriber
from ..cursor import Cursor, parse_cursor, parse_last_event_id
from ..errors import JobcastError, StoreUnavailable
from ..http_errors import log_refusal, response_for
from ..wire import SSE_KEEPALIVE, SSE_RETRY, error_message, sse_frame, sse_frames
from .streams import Services, opening_messages, services_of
from .websocket import log_ended


class EventStream:
    """``text/event-stream`` of the same messages; ``id: epoch:seq`` on transitions."""

    def __init__(self, services: Services, project_id: str, cursor: Cursor | None, grant: Grant, address: str) -> None:
        self.services = services
        self.project_id = project_id
        self.cursor = cursor
        self.grant = grant
        self.address = address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count the stream against its client address (429 past the limit), then stream."""
        connections = self.services.limits.connections
        try:
            await self.services.limits.open_stream(self.address, self.services.engine.store)
        except JobcastError as exc:
            log_refusal(scope, exc)
            await response_for(exc)(scope, receive, send)
            return
        try:
            await self._respond(scope, receive, send)
        finally:
            connections.release(self.address)

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        async with self.services.hub.subscribe(self.project_id) as sub, anyio.create_task_group() as tasks:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            tasks.start_soon(self._stream, send, sub, tasks.cancel_scope)
            tasks.start_soon(_wait_for_disconnect, receive, tasks.cancel_scope)
            tasks.start_soon(_cancel_on, sub.overflowed, tasks.cancel_scope)
            tasks.start_soon(_cancel_on, self.services.hub.closing, tasks.cancel_scope)
            tasks.start_soon(_cancel_after, self.grant.seconds_left(time.time()), tasks.cancel_scope)
        if sub.close_reason is not None:
            log_ended(scope, sub, sub.close_reason)
        with anyio.move_on_after(1):
            try:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:
                pass

    async def _stream(self, send: Send, sub: Subscriber, scope: anyio.CancelScope) -> None:
        try:
            opening = await opening_messages(self.services, self.project_id, self.cursor, sub)
            await _send_chunk(send, SSE_RETRY + sse_frames(opening))
            while True:
                with anyio.move_on_after(self.services.settings.sse_keepalive) as idle:
                    batch = await sub.next_batch()
                if idle.cancelled_caught:
                    await _send_chunk(send, SSE_KEEPALIVE)
                else:
                    await _send_chunk(send, sse_frames(batch))
        except OSError:
            scope.cancel()
        except StoreUnavailable as exc:
            # The browser's EventSource reconnects by itself, with Last-Event-ID, after "retry".
            error = error_message(exc.code, exc.message)
            with anyio.move_on_after(1), contextlib.suppress(OSError):
                await _send_chunk(send, SSE_RETRY + sse_frame(error))
            scope.cancel()


async def _send_chunk(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _wait_for_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def _cancel_on(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _cancel_after(seconds: float | None, scope: anyio.CancelScope) -> None:
    """End the stream when its token expires: the client's reconnect then meets the 401."""
    if seconds is not None:
        await anyio.sleep(seconds)
        scope.cancel()


async def event_stream(request: Request) -> EventStream:
    """Starlette sends whatever ASGI callable a handler returns; EventStream is one."""
    grant, project_id = access.project_access(request, "read")
    cursor = parse_last_event_id(request.headers.get("last-event-id")) or parse_cursor(
        request.query_params.get("epoch"), request.query_params.get("after")
    )
    return EventStream(services_of(request.state), project_id, cursor, grant, access.client_address(request))
