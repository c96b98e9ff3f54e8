"""Browser origins: the server's own, or one listed exactly in ``--allowed-origins``.

:class:`OriginGuard` refuses any request or WebSocket handshake whose ``Origin`` is
neither, with 403 ``origin_not_allowed``, before any route runs. A request without
``Origin`` (a CLI, a program, a browser's top-level navigation) passes, with one
exception: browsers send no ``Origin`` on simple cross-site GETs (``<img src>``,
``fetch(..., {mode: "no-cors"})``), so those are told apart by their Fetch Metadata
(``Sec-Fetch-Site``). A cross-site request without an allowed Origin is refused unless
it is a top-level navigation to a route that changes nothing. Listed origins also get
CORS answers, so a dashboard hosted elsewhere can call the API with its token; the
server's own pages need none.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from starlette._utils import get_route_path
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from .errors import OriginNotAllowed
from .http_errors import log_refusal, refuse_handshake, response_for

#: The old app's GET that starts a job: the one GET that changes state.
_STARTS_ON_GET = re.compile(r"/[^/]+_agent/status/[^/]+")
#: Fetch Metadata values of a request made by another site's page.
_OTHER_SITE = ("cross-site", "same-site")


def fetched_by_another_site(scope: Scope) -> bool:
    """A browser request, without Origin, that another site's page made (not a link the user followed to a page)."""
    headers = Headers(scope=scope)
    if headers.get("sec-fetch-site") not in _OTHER_SITE:
        return False  # same-origin, a typed URL or bookmark ("none"), or not a browser
    navigation = headers.get("sec-fetch-mode") == "navigate" and scope.get("method") == "GET"
    return not navigation or bool(_STARTS_ON_GET.fullmatch(get_route_path(scope)))


def origin_allowed(scope: Scope, origin: str | None, allowed: Sequence[str]) -> bool:
    """No Origin (a CLI) is fine; a browser's must be ours or listed exactly. ``null`` never is."""
    if origin is None:
        return True
    host = Headers(scope=scope).get("host", "")
    scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"
    return origin == f"{scheme}://{host}" or origin in allowed


def origin_refused(scope: Scope, allowed: Sequence[str]) -> bool:
    """Whether the guard refuses this request or handshake: a foreign browser origin, or a page of another site."""
    origin = Headers(scope=scope).get("origin")
    return not origin_allowed(scope, origin, allowed) or (origin is None and fetched_by_another_site(scope))


class OriginGuard:
    """ASGI middleware: 403 ``origin_not_allowed`` for a foreign browser origin, on HTTP and WebSocket."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str] = ()) -> None:
        self.app = app
        self.allowed = tuple(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and origin_refused(scope, self.allowed):
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
                # a refresh's JSON body is sent as application/json, which needs a preflight too
                allow_headers=["authorization", "content-type", "last-event-id"],
                expose_headers=["retry-after"],
                max_age=600,
            )
        )
    return middleware
