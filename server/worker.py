"""``jobcast worker``: a process that runs queued jobs from a shared store and serves no HTTP.

It takes the next job the scheduler's rules allow (:mod:`.scheduling`), as a ``jobcast
serve`` process does, and sends its transitions and progress through the store, so
every serve process pushes them to its subscribers. On SIGTERM or SIGINT it stops
taking jobs and lets the running ones finish within ``--shutdown-grace``; those still
running then end ``interrupted``.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Mapping

import anyio

from jobcast.agents import Agent

from . import logs
from .engine import Engine
from .errors import ConfigError, StoreUnavailable
from .hub import Hub
from .metrics import Metrics, keep_publishing, record_gauges
from .plugins import load_agents
from .settings import Settings
from .store import Store, store_for

logger = logging.getLogger(__name__)


def check_worker(settings: Settings, store: Store) -> None:
    scheme = settings.store.partition("://")[0]
    if not store.shared:
        raise ConfigError(
            f"a worker takes jobs from a store it shares with jobcast serve; {scheme}: lives inside one process. "
            "Use redis://127.0.0.1:6379/0 (see docs/scheduling.md)"
        )
    if settings.threads < 1:
        raise ConfigError("a worker needs at least one thread (--threads 1 or more)")


def run_worker(settings: Settings) -> int:
    """Check the store and the agents, then take jobs until a signal."""
    logs.configure(settings.log_level, settings.log_format)
    logs.install(settings.secret, log_format=settings.log_format)
    store = store_for(settings)
    check_worker(settings, store)
    agents = load_agents(settings.agents, app_dir=settings.app_dir)
    anyio.run(work, settings, store, agents)
    return 0


async def work(settings: Settings, store: Store, agents: Mapping[str, Agent]) -> None:
    await store.open()
    try:
        async with anyio.create_task_group() as task_group:
            # The hub has no subscribers here; it sends this process's progress through the store.
            metrics = Metrics()
            hub = Hub(store, task_group, settings.send_buffer, metrics)
            engine = Engine(store, agents, settings, task_group, progress_sink=hub, metrics=metrics)
            try:
                await engine.recover("the process running the job stopped before it finished")
            except StoreUnavailable:
                logger.warning("could not look for interrupted jobs: the store is unavailable")
            task_group.start_soon(engine.keep_leases, name="leases")
            task_group.start_soon(engine.schedule, name="scheduler")
            # It serves no /metrics: its numbers reach the cluster's scrapes through the store.
            task_group.start_soon(keep_publishing, metrics, store, lambda: _record_gauges(metrics, store))
            logger.info(
                "jobcast worker ready: store %s, agents %s, %d threads, pid %s",
                store.kind,
                ", ".join(agents),
                settings.threads,
                engine.runner["pid"],
            )
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    logger.info(
                        "%s: taking no more jobs; waiting up to %g s for %d running",
                        signal.Signals(signum).name,
                        settings.shutdown_grace,
                        engine.busy_threads,
                    )
                    break
            await engine.drain(settings.shutdown_grace)
            await engine.shutdown()
            task_group.cancel_scope.cancel()
    finally:
        await store.close()


def _record_gauges(metrics: Metrics, store: Store) -> None:
    record_gauges(metrics, subscribers={}, store_errors=store.outage.errors, outage_seconds=store.outage.seconds)
