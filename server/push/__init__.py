"""Push: a project's events over WebSocket, Server-Sent Events and long-poll, on one cursor.

One module per transport, each doing only I/O: :mod:`.websocket`, :mod:`.sse` and
:mod:`.longpoll`, and :mod:`.multiplex` for one WebSocket that follows many projects;
what they share (the services, the opening) is in :mod:`.streams`,
and every message they send is built in :mod:`jobcast.server.wire`.

Each transport checks the token first (:mod:`jobcast.server.access`) and counts itself
against its client address's stream limit (:mod:`jobcast.server.limits`); browser
origins were checked before any route ran (:mod:`jobcast.server.origins`).
"""

from __future__ import annotations

from starlette.routing import Route, WebSocketRoute

from .longpoll import poll_events
from .multiplex import multiplex_socket
from .sse import event_stream
from .websocket import project_socket, unknown_socket

#: The sockets that stay open for hours, thousands at a time: the app sends them from the origin check straight
#: to their endpoint (:class:`jobcast.server.app.JobcastApp`); they are routes too, for anything that lists routes.
SOCKETS = [
    WebSocketRoute("/ws/projects/{project_id}", project_socket),
    WebSocketRoute("/ws", multiplex_socket),
]

ROUTES = [
    *SOCKETS,
    WebSocketRoute("/{path:path}", unknown_socket),  # last: only what no other route takes
    Route("/api/projects/{project_id}/events/stream", event_stream, methods=["GET"]),
    Route("/api/projects/{project_id}/events", poll_events, methods=["GET"]),
]
