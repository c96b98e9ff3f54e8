"""Browser origins: the server's own, or one listed exactly in ``--allowed-origins``.

:class:`OriginGuard` refuses any request or WebSocket handshake whose ``Origin`` is
neither, with 403 ``origin_not_allowed``, before any route runs. A request without
``Origin`` (a CLI, a program, a browser's top-level navigation) passes. Listed
origins also get CORS answers, so a dashboard hosted elsewhere can call the API with
its token; the server's own pages need none.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from .errors import OriginNotAllowed
from .http_errors import log_refusal, refuse_handshake, response_for


def origin_allowed(scope: Scope, origin: str | None, allowed: Sequence[str]) -> bool:
    """No Origin (a CLI) is fine; a browser's must be ours or listed exactly. ``null`` never is."""
    if origin is None:
        return True
    host = Headers(scope=scope).get("host", "")
    scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"
    return origin == f"{scheme}://{host}" or origin in allowed


class OriginGuard:
    """ASGI middleware: 403 ``origin_not_allowed`` for a foreign browser origin, on HTTP and WebSocket."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str] = ()) -> None:
        self.app = app
        self.allowed = tuple(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            origin = Headers(scope=scope).get("origin")
            if not origin_allowed(scope, origin, self.allowed):
                await self._refuse(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = OriginNotAllowed()
        if scope["type"] == "websocket":
            await refuse_handshake(WebSocket(scope, receive, send), error)
        else:
            log_refusal(scope, error)
            await response_for(error)(scope, receive, send)


def origin_middleware(allowed: Sequence[str]) -> list[Middleware]:
    """The guard, and CORS for the listed origins (with the headers jobcast's clients send)."""
    middleware = [Middleware(OriginGuard, allowed=tuple(allowed))]
    if allowed:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(allowed),
                allow_methods=["GET", "POST"],
                allow_headers=["authorization", "last-event-id"],
                expose_headers=["retry-after"],
                max_age=600,
            )
        )
    return middleware
