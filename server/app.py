"""The app factory: ``uvicorn jobcast.server.app:create_app --factory`` or ``jobcast serve``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.routing import Match, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from jobcast.agents import Agent

from . import api, legacy, pages, push
from .auth import Auth
from .engine import Engine
from .errors import StoreUnavailable
from .http_errors import EXCEPTION_HANDLERS
from .hub import Hub
from .limits import Limits
from .metrics import Metrics, keep_publishing
from .origins import origin_middleware, origin_refused
from .plugins import load_agents
from .presence import Presence
from .settings import Settings
from .store import Store, store_for

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    agents: Mapping[str, Agent] | None = None,
    store: Store | None = None,
) -> Starlette:
    """Build the app. Agents and the store come from settings unless given (tests pass their own)."""
    settings = settings or Settings.from_env()
    agents = agents if agents is not None else load_agents(settings.agents, app_dir=settings.app_dir)
    store = store if store is not None else store_for(settings)
    auth = Auth.from_settings(settings)
    limits = Limits.from_settings(settings)
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        await store.open()
        try:
            async with anyio.create_task_group() as task_group:
                hub = Hub(store, task_group, settings.send_buffer, metrics)
                engine = Engine(store, agents, settings, task_group, progress_sink=hub, metrics=metrics)
                hub.queue_source = engine.places
                presence = Presence(hub, store, limits.process)
                await _recover(engine)
                if store.shared:
                    task_group.start_soon(engine.keep_leases, name="leases")
                task_group.start_soon(engine.schedule, name="scheduler")
                task_group.start_soon(limits.keep_publishing, store, name="connections")
                task_group.start_soon(presence.keep_pushing, name="presence")
                task_group.start_soon(keep_publishing, metrics, store, lambda: api.record_process_gauges(engine, hub))
                logger.info(
                    "jobcast ready: store %s (epoch %s), agents %s, %d threads",
                    store.kind,
                    store.epoch,
                    ", ".join(agents),
                    settings.threads,
                )
                yield {
                    "engine": engine,
                    "hub": hub,
                    "settings": settings,
                    "auth": auth,
                    "limits": limits,
                    "metrics": metrics,
                    "presence": presence,
                }
                await engine.shutdown()
                task_group.cancel_scope.cancel()
        finally:
            await store.close()

    app = JobcastApp(
        sockets=push.SOCKETS,
        allowed_origins=settings.allowed_origins,
        routes=[*api.ROUTES, *push.ROUTES, *pages.ROUTES, *legacy.ROUTES],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=origin_middleware(settings.allowed_origins),
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # a 404 in JSON beats a bodyless redirect
    return app


class JobcastApp(Starlette):
    """Starlette, with one shortcut: a push WebSocket (open for hours, thousands at once) goes from the origin
    check straight to its endpoint, without the middleware and router frames each socket would otherwise keep
    alive (about 4 KB apiece). Its endpoint checks the token and answers every refusal itself. A refused origin,
    and every other request, takes the usual way through the middleware."""

    def __init__(self, *, sockets: Sequence[WebSocketRoute], allowed_origins: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sockets = tuple(sockets)
        self.allowed_origins = tuple(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and not origin_refused(scope, self.allowed_origins):
            for route in self.sockets:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope["app"] = self
                    scope.update(child)
                    await route.endpoint(WebSocket(scope, receive, send))
                    return
        await super().__call__(scope, receive, send)


async def _recover(engine: Engine) -> None:
    """Fail jobs a stopped process left behind; with the store down, the lease rounds do it later."""
    try:
        await engine.recover("the server stopped before the job finished")
    except StoreUnavailable:
        logger.warning("could not look for interrupted jobs: the store is unavailable")
