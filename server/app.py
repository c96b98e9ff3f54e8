"""The app factory: ``uvicorn server.app:create_app --factory`` or ``jobcast serve``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
from starlette.applications import Starlette

from agents import Agent

from . import api, legacy, pages, push
from .engine import Engine, EngineConfig
from .http_errors import EXCEPTION_HANDLERS
from .hub import Hub
from .plugins import load_agents
from .push import PushConfig
from .settings import Settings
from .store import Store, store_from_url

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    agents: Mapping[str, Agent] | None = None,
    store: Store | None = None,
) -> Starlette:
    """Build the app. Agents and the store come from settings unless given (tests pass their own)."""
    settings = settings or Settings.from_env()
    agents = agents if agents is not None else load_agents(settings.agents)
    store = store if store is not None else store_from_url(settings.store)
    config = EngineConfig(
        threads=settings.threads,
        job_timeout=settings.job_timeout,
        demo_seconds=settings.demo_seconds,
        progress_interval=settings.progress_interval,
    )
    push_config = PushConfig(
        history=settings.history, allowed_origins=settings.allowed_origins, sse_keepalive=settings.sse_keepalive
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        await store.open()
        try:
            async with anyio.create_task_group() as task_group:
                hub = Hub(store, task_group, settings.send_buffer)
                engine = Engine(store, agents, config, task_group, progress_sink=hub)
                await engine.recover("the server stopped before the job finished")
                logger.info(
                    "jobcast ready: store %s (epoch %s), agents %s, %d threads",
                    store.kind,
                    store.epoch,
                    ", ".join(agents),
                    config.threads,
                )
                yield {"engine": engine, "hub": hub, "push": push_config}
                await engine.shutdown()
                task_group.cancel_scope.cancel()
        finally:
            await store.close()

    app = Starlette(
        routes=[*api.ROUTES, *push.ROUTES, *pages.ROUTES, *legacy.ROUTES],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # a 404 in JSON beats a bodyless redirect
    return app
