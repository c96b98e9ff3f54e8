"""The app factory: ``uvicorn jobcast.server.app:create_app --factory`` or ``jobcast serve``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
from starlette.applications import Starlette

from jobcast.agents import Agent

from . import api, legacy, pages, push
from .auth import Auth
from .engine import Engine
from .errors import StoreUnavailable
from .http_errors import EXCEPTION_HANDLERS
from .hub import Hub
from .limits import Limits
from .metrics import Metrics, keep_publishing
from .origins import origin_middleware
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

    app = Starlette(
        routes=[*api.ROUTES, *push.ROUTES, *pages.ROUTES, *legacy.ROUTES],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=origin_middleware(settings.allowed_origins),
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # a 404 in JSON beats a bodyless redirect
    return app


async def _recover(engine: Engine) -> None:
    """Fail jobs a stopped process left behind; with the store down, the lease rounds do it later."""
    try:
        await engine.recover("the server stopped before the job finished")
    except StoreUnavailable:
        logger.warning("could not look for interrupted jobs: the store is unavailable")
