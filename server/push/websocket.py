"""The WebSocket transport: the handshake's checks, the opening, then direct writes; I/O only.

Messages come from :mod:`..wire`; the fan-out writes to the socket without awaiting it
(uvicorn_ws's ``send_text_nowait``) while the client keeps up, and a drainer task takes
over while it does not. A socket is closed with 1008 when its token expires.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable

import anyio
from starlette.types import Scope
from starlette.websockets import WebSocket, WebSocketDisconnect

from .. import access
from ..auth import SUBPROTOCOL, Grant
from ..channel import Subscriber
from ..cursor import Cursor, parse_cursor
from ..errors import CloseCode, JobcastError, NoSuchEndpoint, StoreUnavailable
from ..http_errors import refuse_handshake
from ..uvicorn_ws import PEER_CLOSED, SEND_NOWAIT
from ..wire import FELL_BEHIND, MAX_INBOUND_BYTES, STORE_DOWN, client_reply, encode, error_payload
from .streams import Services, opening_messages, services_of

logger = logging.getLogger(__name__)


async def project_socket(websocket: WebSocket) -> None:
    """Refuse the handshake (401, 403, 400, 429) or serve the socket; the Origin was checked before."""
    services = services_of(websocket.state)
    address = access.client_address(websocket)
    try:
        grant, project_id = access.project_access(websocket, "read")
        await services.limits.open_stream(address, services.engine.store)
    except JobcastError as exc:
        await refuse_handshake(websocket, exc)
        return
    try:
        await _serve_socket(websocket, services, grant, project_id)
    finally:
        services.limits.connections.release(address)


async def _serve_socket(websocket: WebSocket, services: Services, grant: Grant, project_id: str) -> None:
    cursor = parse_cursor(websocket.query_params.get("epoch"), websocket.query_params.get("after"))
    # A browser offers "jobcast" beside its token; answer with "jobcast", never with the token.
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    hub, sub = services.hub, services.hub.new_subscriber()
    try:
        try:
            await hub.join(project_id, sub)
        except StoreUnavailable as exc:
            await close_unavailable(websocket, exc)
            return
        sub.writer = websocket.scope.get("extensions", {}).get(SEND_NOWAIT)
        # Helpers run in the app's task group, not a group per connection: 10k idle sockets
        # should cost as little as possible. Each ends once its socket does.
        sub.on_backlog = functools.partial(hub.spawn, _drain, websocket, sub)
        sub.on_overflow = functools.partial(hub.spawn, _close_ended, websocket, sub)
        if await _send_opening(websocket, services, project_id, cursor, sub):
            hub.spawn(_drain, websocket, sub)  # whatever queued meanwhile, then direct writes
            await receive_until_expiry(websocket, grant, services.limits.message_allowance(), _answer)
    finally:
        hub.leave(project_id, sub)
        sub.writer = sub.on_backlog = sub.on_overflow = None


async def _send_opening(
    websocket: WebSocket, services: Services, project_id: str, cursor: Cursor | None, sub: Subscriber
) -> bool:
    try:
        for message in await opening_messages(services, project_id, cursor, sub):
            await websocket.send_text(message.text)
    except (WebSocketDisconnect, RuntimeError):
        return False
    except StoreUnavailable as exc:
        await close_unavailable(websocket, exc)
        return False
    return True


async def close_unavailable(websocket: WebSocket, exc: StoreUnavailable) -> None:
    """The store is down: say so, then close with 1013 so the client retries later with its cursor."""
    try:
        await websocket.send_text(encode(error_payload(exc.code, exc.message)))
    except (WebSocketDisconnect, RuntimeError):
        return
    await close_socket(websocket, CloseCode.TRY_AGAIN_LATER, STORE_DOWN)


async def _close_ended(websocket: WebSocket, sub: Subscriber) -> None:
    """The hub ended the subscriber (it fell behind, or the store started a new epoch): 1013, with the reason."""
    reason = sub.close_reason or FELL_BEHIND
    log_ended(websocket.scope, sub, reason)
    await close_socket(websocket, CloseCode.TRY_AGAIN_LATER, reason)


def log_ended(scope: Scope, sub: Subscriber, reason: str) -> None:
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


async def _answer(websocket: WebSocket, text: str) -> None:
    await websocket.send_text(encode(client_reply(text)))


Answer = Callable[[WebSocket, str], Awaitable[None]]


async def receive_until_expiry(websocket: WebSocket, grant: Grant, allowed: Callable[[], bool], answer: Answer) -> None:
    """Answer the client until it leaves or breaks a rule; close with 1008 when its token expires."""
    with anyio.move_on_after(grant.seconds_left(time.time())) as expiry:
        await _receive_messages(websocket, allowed, answer)
    if expiry.cancelled_caught:
        logger.info("closing WebSocket %s from %s: its token expired", websocket.url.path, _peer(websocket))
        await close_socket(websocket, CloseCode.POLICY_VIOLATION, "token expired")


async def _receive_messages(websocket: WebSocket, allowed: Callable[[], bool], answer: Answer) -> None:
    """Answer client messages until the client leaves or breaks the rules."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                if message.get("code") == CloseCode.MESSAGE_TOO_BIG and not _peer_closed(websocket):
                    _log_limit(websocket, "a message over 64 KiB")  # uvicorn enforced it; a peer's own 1009 is not
                return
            if message.get("bytes") is not None:
                await close_socket(websocket, CloseCode.UNSUPPORTED_DATA, "binary frames are not accepted")
                return
            text = message.get("text") or ""
            if len(text) > MAX_INBOUND_BYTES or len(text.encode()) > MAX_INBOUND_BYTES:
                _log_limit(websocket, "a message over 64 KiB")
                await close_socket(websocket, CloseCode.MESSAGE_TOO_BIG, "messages are limited to 64 KiB")
                return
            if not allowed():
                _log_limit(websocket, "messages too fast")
                await close_socket(websocket, CloseCode.POLICY_VIOLATION, "too many messages; slow down")
                return
            await answer(websocket, text)
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


async def close_socket(websocket: WebSocket, code: int, reason: str) -> None:
    # Without jobcast's protocol class, uvicorn may wait on a full socket even to close.
    with anyio.move_on_after(2):
        try:
            await websocket.close(code, reason)
        except (WebSocketDisconnect, RuntimeError):
            pass


async def unknown_socket(websocket: WebSocket) -> None:
    """A WebSocket to any other path (``/ws/projects/a%2Fb`` decodes to one) is refused with JSON, not a bare 403."""
    await refuse_handshake(websocket, NoSuchEndpoint(websocket.scope["path"]))
