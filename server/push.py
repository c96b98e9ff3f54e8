"""Push: a project's events over WebSocket, Server-Sent Events and long-poll, on one cursor.

Each transport checks the token first (:mod:`server.access`) and counts itself against
its client address's stream limit (:mod:`server.limits`); browser origins were checked
before any route ran (:mod:`server.origins`). A WebSocket is closed with 1008 when its
token expires, and an SSE stream ends then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from . import access, validation
from .auth import SUBPROTOCOL, Grant
from .cursor import Cursor, Resume, Snapshot, parse_cursor, parse_last_event_id, plan
from .engine import Engine
from .errors import CloseCode, JobcastError, NoSuchEndpoint, StoreUnavailable
from .http_errors import log_refusal, refuse_handshake, response_for
from .hub import FELL_BEHIND, Hub, Message, Subscriber, encode, event_message, server_time
from .limits import Limits
from .origins import origin_allowed
from .settings import Settings
from .uvicorn_ws import PEER_CLOSED, SEND_NOWAIT
from .views import agents_state

__all__ = ["ROUTES", "client_reply", "origin_allowed", "sse_frame"]

logger = logging.getLogger(__name__)

MAX_INBOUND_BYTES = 64 * 1024
MAX_WAIT_SECONDS = 30
_REPLAY_BATCH = 500


@dataclasses.dataclass(frozen=True)
class _Services:
    engine: Engine
    hub: Hub
    settings: Settings
    limits: Limits


def _services(scope_state: Any) -> _Services:
    return _Services(scope_state.engine, scope_state.hub, scope_state.settings, scope_state.limits)


# -- the opening of every stream: snapshot, or welcome plus replay ------------------------


async def opening_messages(
    services: _Services, project_id: str, cursor: Cursor | None, sub: Subscriber
) -> list[Message]:
    """What a subscriber gets first. Live events queued meanwhile are trimmed so none repeats."""
    store = services.engine.store
    last_seq = await store.last_seq(project_id)
    decision = plan(cursor, epoch=store.epoch, last_seq=last_seq, history=services.settings.history)
    if isinstance(decision, Snapshot):
        messages = [await _snapshot(services, project_id, decision.reason, sub)]
    else:
        messages = await _replay(services, project_id, decision, last_seq, sub)
    services.hub.add_latest_progress(project_id, sub)
    return messages


async def _snapshot(services: _Services, project_id: str, reason: str, sub: Subscriber) -> Message:
    store = services.engine.store
    state = await store.snapshot(project_id, list(services.engine.agents))
    sub.rebase(state.seq)
    payload = {
        "type": "snapshot",
        "project_id": project_id,
        "epoch": store.epoch,
        "seq": state.seq,
        "recovered": False,
        "reason": reason,
        "agents": agents_state(state),
        "server_time": server_time(),
    }
    return Message("snapshot", encode(payload), f"{store.epoch}:{state.seq}")


async def _replay(
    services: _Services, project_id: str, decision: Resume, last_seq: int, sub: Subscriber
) -> list[Message]:
    store = services.engine.store
    welcome = {"type": "welcome", "project_id": project_id, "epoch": store.epoch, "seq": last_seq, "recovered": True}
    messages = [Message("welcome", encode(welcome))]
    after = decision.after
    while events := await store.events_after(project_id, after, _REPLAY_BATCH):
        messages.extend(event_message(event) for event in events)
        after = events[-1].seq
    sub.rebase(after)
    return messages


# -- WebSocket -------------------------------------------------------------------------------


def client_reply(text: str) -> dict[str, Any]:
    """The answer to one client text message. Pure, so every case is easy to test."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes ("[" * 60000)
        return _client_error("bad_json", "messages must be JSON objects")
    if not isinstance(message, dict):
        return _client_error("bad_message", "messages must be JSON objects")
    kind = message.get("type")
    if kind is None:
        return _client_error("missing_type", "messages need a 'type' field")
    if kind == "ping":
        return {"type": "pong"}
    return _client_error("unknown_type", f"unknown message type {str(kind)[:40]!r}; the only one is 'ping'")


def _client_error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


async def project_socket(websocket: WebSocket) -> None:
    """Refuse the handshake (401, 403, 400, 429) or serve the socket; the Origin was checked before."""
    services = _services(websocket.state)
    address = access.client_address(websocket)
    try:
        grant, project_id = access.project_access(websocket, "read")
        services.limits.connections.acquire(address)
    except JobcastError as exc:
        await refuse_handshake(websocket, exc)
        return
    try:
        await _serve_socket(websocket, services, grant, project_id)
    finally:
        services.limits.connections.release(address)


async def _serve_socket(websocket: WebSocket, services: _Services, grant: Grant, project_id: str) -> None:
    cursor = parse_cursor(websocket.query_params.get("epoch"), websocket.query_params.get("after"))
    # A browser offers "jobcast" beside its token; answer with "jobcast", never with the token.
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    hub, sub = services.hub, services.hub.new_subscriber()
    try:
        try:
            await hub.join(project_id, sub)
        except StoreUnavailable as exc:
            await _close_unavailable(websocket, exc)
            return
        sub.writer = websocket.scope.get("extensions", {}).get(SEND_NOWAIT)
        # Helpers run in the app's task group, not a group per connection: 10k idle sockets
        # should cost as little as possible. Each ends once its socket does.
        sub.on_backlog = functools.partial(hub.spawn, _drain, websocket, sub)
        sub.on_overflow = functools.partial(hub.spawn, _close_ended, websocket, sub)
        if await _send_opening(websocket, services, project_id, cursor, sub):
            hub.spawn(_drain, websocket, sub)  # whatever queued meanwhile, then direct writes
            await _receive_until_expiry(websocket, grant, services.limits.message_allowance())
    finally:
        hub.leave(project_id, sub)
        sub.writer = sub.on_backlog = sub.on_overflow = None


async def _send_opening(
    websocket: WebSocket, services: _Services, project_id: str, cursor: Cursor | None, sub: Subscriber
) -> bool:
    try:
        for message in await opening_messages(services, project_id, cursor, sub):
            await websocket.send_text(message.text)
    except (WebSocketDisconnect, RuntimeError):
        return False
    except StoreUnavailable as exc:
        await _close_unavailable(websocket, exc)
        return False
    return True


async def _close_unavailable(websocket: WebSocket, exc: StoreUnavailable) -> None:
    """The store is down: say so, then close with 1013 so the client retries later with its cursor."""
    try:
        await websocket.send_text(encode(_client_error(exc.code, exc.message)))
    except (WebSocketDisconnect, RuntimeError):
        return
    await _close(websocket, CloseCode.TRY_AGAIN_LATER, "the store is unavailable; try again shortly")


async def _close_ended(websocket: WebSocket, sub: Subscriber) -> None:
    """The hub ended the subscriber (it fell behind, or the store started a new epoch): 1013, with the reason."""
    reason = sub.close_reason or FELL_BEHIND
    _log_ended(websocket.scope, sub, reason)
    await _close(websocket, CloseCode.TRY_AGAIN_LATER, reason)


def _log_ended(scope: Scope, sub: Subscriber, reason: str) -> None:
    """One line per subscriber closed for falling behind; a new epoch is logged once, by its channel."""
    if reason == FELL_BEHIND:
        kind = "WebSocket" if scope["type"] == "websocket" else "SSE stream"
        logger.warning(
            "closing %s %s from %s with 1013: too far behind (%d transitions queued); it resumes from its cursor",
            kind,
            scope.get("path", ""),
            _peer_of(scope),
            sub.limit,
        )


async def _drain(websocket: WebSocket, sub: Subscriber) -> None:
    """Send a laggard's queue in order; once it is empty, go back to direct writes."""
    try:
        while batch := sub.take_batch():
            for message in batch:
                await websocket.send_text(message.text)
    except (WebSocketDisconnect, RuntimeError):
        return
    sub.release()


async def _receive_until_expiry(websocket: WebSocket, grant: Grant, allowed: Callable[[], bool]) -> None:
    """Answer the client until it leaves or breaks a rule; close with 1008 when its token expires."""
    with anyio.move_on_after(grant.seconds_left(time.time())) as expiry:
        await _receive_messages(websocket, allowed)
    if expiry.cancelled_caught:
        logger.info("closing WebSocket %s from %s: its token expired", websocket.url.path, _peer(websocket))
        await _close(websocket, CloseCode.POLICY_VIOLATION, "token expired")


async def _receive_messages(websocket: WebSocket, allowed: Callable[[], bool]) -> None:
    """Answer client messages until the client leaves or breaks the rules."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                if message.get("code") == CloseCode.MESSAGE_TOO_BIG and not _peer_closed(websocket):
                    _log_limit(websocket, "a message over 64 KiB")  # uvicorn enforced it; a peer's own 1009 is not
                return
            if message.get("bytes") is not None:
                await _close(websocket, CloseCode.UNSUPPORTED_DATA, "binary frames are not accepted")
                return
            text = message.get("text") or ""
            if len(text) > MAX_INBOUND_BYTES or len(text.encode()) > MAX_INBOUND_BYTES:
                _log_limit(websocket, "a message over 64 KiB")
                await _close(websocket, CloseCode.MESSAGE_TOO_BIG, "messages are limited to 64 KiB")
                return
            if not allowed():
                _log_limit(websocket, "messages too fast")
                await _close(websocket, CloseCode.POLICY_VIOLATION, "too many messages; slow down")
                return
            await websocket.send_text(encode(client_reply(text)))
    except (WebSocketDisconnect, RuntimeError):
        return


def _log_limit(websocket: WebSocket, what: str) -> None:
    logger.warning("closing WebSocket %s from %s: %s", websocket.url.path, _peer(websocket), what)


def _peer(websocket: WebSocket) -> str:
    return _peer_of(websocket.scope)


def _peer_of(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"


def _peer_closed(websocket: WebSocket) -> bool:
    """Whether the close came from the client's own close frame (jobcast's protocol class tells; others don't)."""
    peer_closed = websocket.scope.get("extensions", {}).get(PEER_CLOSED)
    return bool(peer_closed and peer_closed())


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    # Without jobcast's protocol class, uvicorn may wait on a full socket even to close.
    with anyio.move_on_after(2):
        try:
            await websocket.close(code, reason)
        except (WebSocketDisconnect, RuntimeError):
            pass


# -- Server-Sent Events -----------------------------------------------------------------


class EventStream:
    """``text/event-stream`` of the same messages; ``id: epoch:seq`` on transitions."""

    def __init__(self, services: _Services, project_id: str, cursor: Cursor | None, grant: Grant, address: str) -> None:
        self.services = services
        self.project_id = project_id
        self.cursor = cursor
        self.grant = grant
        self.address = address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count the stream against its client address (429 past the limit), then stream."""
        connections = self.services.limits.connections
        try:
            connections.acquire(self.address)
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
            _log_ended(scope, sub, sub.close_reason)
        with anyio.move_on_after(1):
            try:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:
                pass

    async def _stream(self, send: Send, sub: Subscriber, scope: anyio.CancelScope) -> None:
        try:
            opening = await opening_messages(self.services, self.project_id, self.cursor, sub)
            await _send_chunk(send, b"retry: 2000\n\n" + b"".join(sse_frame(m) for m in opening))
            while True:
                with anyio.move_on_after(self.services.settings.sse_keepalive) as idle:
                    batch = await sub.next_batch()
                if idle.cancelled_caught:
                    await _send_chunk(send, b": keep-alive\n\n")
                else:
                    await _send_chunk(send, b"".join(sse_frame(m) for m in batch))
        except OSError:
            scope.cancel()
        except StoreUnavailable as exc:
            # The browser's EventSource reconnects by itself, with Last-Event-ID, after "retry".
            error = Message("error", encode(_client_error(exc.code, exc.message)))
            with anyio.move_on_after(1), contextlib.suppress(OSError):
                await _send_chunk(send, b"retry: 2000\n\n" + sse_frame(error))
            scope.cancel()


def sse_frame(message: Message) -> bytes:
    lines = [f"event: {message.type}"]
    if message.event_id is not None:
        lines.insert(0, f"id: {message.event_id}")
    lines.append(f"data: {message.text}")
    return ("\n".join(lines) + "\n\n").encode()


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
    return EventStream(_services(request.state), project_id, cursor, grant, access.client_address(request))


# -- long-poll ---------------------------------------------------------------------------------


async def poll_events(request: Request) -> JSONResponse:
    """A long-poll holds a connection like a stream, so it counts against the client's limit."""
    grant, project_id = access.project_access(request, "read")
    services = _services(request.state)
    wait = validation.bounded_int("wait", request.query_params.get("wait"), default=25, low=0, high=MAX_WAIT_SECONDS)
    seconds_left = grant.seconds_left(time.time())
    if seconds_left is not None:  # never answer with what happened after the token expired
        wait = min(wait, math.floor(seconds_left))
    with services.limits.connections.hold(access.client_address(request)):
        return await _poll(request, services, project_id, wait)


async def _poll(request: Request, services: _Services, project_id: str, wait: int) -> JSONResponse:
    store = services.engine.store
    cursor = parse_cursor(request.query_params.get("epoch"), request.query_params.get("after"))
    decision = plan(
        cursor, epoch=store.epoch, last_seq=await store.last_seq(project_id), history=services.settings.history
    )
    if isinstance(decision, Snapshot):
        state = await store.snapshot(project_id, list(services.engine.agents))
        body: dict[str, Any] = {
            "epoch": store.epoch,
            "seq": state.seq,
            "recovered": False,
            "reason": decision.reason,
            "snapshot": {"project_id": project_id, "agents": agents_state(state), "server_time": server_time()},
            "events": [],
        }
    else:
        events = await store.events_after(project_id, decision.after, _REPLAY_BATCH)
        if (
            not events
            and wait
            and await services.hub.unless_closing(services.hub.wait_for_events(project_id, decision.after, wait), False)
        ):
            events = await store.events_after(project_id, decision.after, _REPLAY_BATCH)
        seq = events[-1].seq if events else decision.after
        body = {"epoch": store.epoch, "seq": seq, "recovered": True, "events": [e.to_dict() for e in events]}
    body["progress"] = [p for p in services.hub.latest_progress(project_id) if p["seq"] <= body["seq"]]
    return JSONResponse(body)


async def unknown_socket(websocket: WebSocket) -> None:
    """A WebSocket to any other path (``/ws/projects/a%2Fb`` decodes to one) is refused with JSON, not a bare 403."""
    await refuse_handshake(websocket, NoSuchEndpoint(websocket.scope["path"]))


ROUTES = [
    WebSocketRoute("/ws/projects/{project_id}", project_socket),
    WebSocketRoute("/{path:path}", unknown_socket),  # last: only what no other route takes
    Route("/api/projects/{project_id}/events/stream", event_stream, methods=["GET"]),
    Route("/api/projects/{project_id}/events", poll_events, methods=["GET"]),
]
