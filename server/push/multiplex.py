"""One WebSocket for many projects, ``/ws``: subscribe and unsubscribe by message; I/O only.

The client sends ``{"type": "subscribe", "project_id", "epoch", "after"}`` and
``{"type": "unsubscribe", "project_id"}``. Each subscription is a subscriber of its
project's channel, exactly like a ``/ws/projects/{id}`` socket: it opens with a snapshot,
or a welcome and the missed transitions, then streams; every message it sends carries
``project_id``. The handshake needs a valid token (401); each subscribe checks the token
covers that project (an ``error`` with ``forbidden``, the socket stays open). A socket
follows at most ``--max-subscriptions`` projects.

A subscriber that falls behind closes the whole socket with 1013, as on a project socket:
the client comes back and subscribes each project again from its cursor. A project whose
channel restarts (a new epoch, a failed reader) ends only that subscription, with an
``error`` ``subscription_ended``, and the client subscribes it again from its cursor.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from .. import access, validation
from ..auth import SUBPROTOCOL, Grant
from ..channel import Subscriber
from ..cursor import parse_cursor
from ..errors import CloseCode, InvalidInput, JobcastError, StoreUnavailable
from ..http_errors import refuse_handshake
from ..uvicorn_ws import SEND_NOWAIT
from ..wire import FELL_BEHIND, encode, error_payload, read_client_message, unknown_type
from .streams import Services, opening_messages, services_of
from .websocket import close_socket, log_ended, receive_until_expiry

logger = logging.getLogger(__name__)

KNOWN_TYPES = "known types are 'subscribe', 'unsubscribe' and 'ping'"


async def multiplex_socket(websocket: WebSocket) -> None:
    """Refuse the handshake (401, 403, 429) or serve the socket; the Origin was checked before."""
    services = services_of(websocket.state)
    address = access.client_address(websocket)
    try:
        grant = access.require(websocket, "read")
        await services.limits.open_stream(address, services.engine.store)
    except JobcastError as exc:
        await refuse_handshake(websocket, exc)
        return
    try:
        offered = websocket.scope.get("subprotocols", [])
        await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        subscriptions = Subscriptions(websocket, services, grant)
        try:
            allowed = services.limits.message_allowance(burst=subscriptions.limit)  # every subscribe at once
            await receive_until_expiry(websocket, grant, allowed, subscriptions.answer)
        finally:
            subscriptions.leave_all()
    finally:
        services.limits.connections.release(address)


class Subscriptions:
    """One socket's subscriptions: a channel subscriber per project."""

    def __init__(self, websocket: WebSocket, services: Services, grant: Grant) -> None:
        self.websocket = websocket
        self.services = services
        self.grant = grant
        self.limit = services.settings.max_subscriptions
        self.by_project: dict[str, Subscriber] = {}

    async def answer(self, websocket: WebSocket, text: str) -> None:
        """Act on one client message; a bad one gets an ``error`` (with its project_id) and changes nothing."""
        project_id: Any = None
        try:
            message = read_client_message(text)
            project_id = message.get("project_id")
            kind = message["type"]
            if kind == "subscribe":
                await self.subscribe(_project_id(project_id), message.get("epoch"), message.get("after"))
            elif kind == "unsubscribe":
                self.unsubscribe(_project_id(project_id))
                await self._send({"type": "unsubscribed", "project_id": project_id})
            elif kind == "ping":
                await self._send({"type": "pong"})
            else:
                raise unknown_type(kind, KNOWN_TYPES)
        except JobcastError as exc:
            reply = error_payload(exc.code, exc.message)
            if isinstance(project_id, str):
                reply["project_id"] = project_id[:200]
            await self._send(reply)

    async def subscribe(self, project_id: str, epoch: Any, after: Any) -> None:
        self.grant.require("read", project_id)
        if project_id in self.by_project:
            raise InvalidInput("already_subscribed", f"this socket follows project {project_id!r} already")
        if len(self.by_project) >= self.limit:
            raise InvalidInput(
                "too_many_subscriptions", f"a socket follows at most {self.limit} projects; unsubscribe one first"
            )
        cursor = parse_cursor(_cursor_part(epoch), _cursor_part(after))
        hub, sub = self.services.hub, self.services.hub.new_subscriber()
        await hub.join(project_id, sub)  # StoreUnavailable: an error for this project; the client tries again
        self.by_project[project_id] = sub
        sub.writer = self.websocket.scope.get("extensions", {}).get(SEND_NOWAIT)
        sub.on_backlog = functools.partial(hub.spawn, self._drain, project_id, sub)
        sub.on_overflow = functools.partial(hub.spawn, self._ended, project_id, sub)
        try:
            for opening in await opening_messages(self.services, project_id, cursor, sub):
                await self.websocket.send_text(opening.text)
        except StoreUnavailable:
            self.unsubscribe(project_id)
            raise
        hub.spawn(self._drain, project_id, sub)  # whatever queued meanwhile, then direct writes

    def unsubscribe(self, project_id: str) -> None:
        sub = self.by_project.pop(project_id, None)
        if sub is None:
            raise InvalidInput("not_subscribed", f"this socket does not follow project {project_id!r}")
        self._forget(project_id, sub)

    def leave_all(self) -> None:
        for project_id, sub in list(self.by_project.items()):
            self._forget(project_id, sub)
        self.by_project.clear()

    def _forget(self, project_id: str, sub: Subscriber) -> None:
        self.services.hub.leave(project_id, sub)
        sub.writer = sub.on_backlog = sub.on_overflow = None
        sub.take_batch()  # what it had queued is no longer wanted

    def _follows(self, project_id: str, sub: Subscriber) -> bool:
        return self.by_project.get(project_id) is sub

    async def _drain(self, project_id: str, sub: Subscriber) -> None:
        """Send a lagging subscription's queue in order, then go back to direct writes; nothing after it ends."""
        try:
            while self._follows(project_id, sub) and (batch := sub.take_batch()):
                for message in batch:
                    if not self._follows(project_id, sub):
                        return
                    await self.websocket.send_text(message.text)
        except (WebSocketDisconnect, RuntimeError):
            return
        sub.release()

    async def _ended(self, project_id: str, sub: Subscriber) -> None:
        """Falling behind closes the socket (the client is slow, whatever the project); a restarted channel
        ends its one subscription, and the client subscribes again from its cursor."""
        reason = sub.close_reason or FELL_BEHIND
        if reason == FELL_BEHIND:
            log_ended(self.websocket.scope, sub, reason)
            await close_socket(self.websocket, CloseCode.TRY_AGAIN_LATER, reason)
            return
        if not self._follows(project_id, sub):
            return
        self.by_project.pop(project_id)
        self._forget(project_id, sub)
        ended = {"type": "error", "code": "subscription_ended", "message": reason, "project_id": project_id}
        try:
            await self._send(ended)
        except (WebSocketDisconnect, RuntimeError):
            pass

    async def _send(self, payload: dict[str, Any]) -> None:
        await self.websocket.send_text(encode(payload))


def _project_id(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInput("invalid_project_id", "this message needs a project_id string")
    return validation.project_id(value)


def _cursor_part(value: Any) -> str | None:
    """``epoch`` and ``after`` as the query parameters would give them; anything else is no cursor (a snapshot)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)
