"""Presence: how many clients watch each project, across transports and processes, pushed as it changes.

A watcher is an open WebSocket on ``/ws/projects/{id}``, one subscription of a multiplexed
``/ws``, an SSE stream, or a long-poll client. A long-poll client holds no connection
between its polls, so it counts while a poll waits and for :data:`POLL_GRACE` seconds
after, once per client (its ``client`` query parameter, else its address and user agent).

Each process counts its own watchers. On a shared store each publishes its counts every
:data:`PUSH_INTERVAL` and adds those of the other live processes. A project's
``presence`` message goes to its subscribers when its total changes, so at most once per
:data:`PUSH_INTERVAL`, and a new subscriber gets the last one with its opening.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator

import anyio

from .errors import StoreUnavailable
from .hub import Hub
from .store import Store

#: how often counts are published and totals pushed
PUSH_INTERVAL = 1.0
#: how long a process's published counts count without a newer publication (it may have died)
PRESENCE_MAX_AGE = 5.0
#: how long a long-poll client counts after its poll answered; more than a client waits between polls
POLL_GRACE = 10.0

logger = logging.getLogger(__name__)


class Pollers:
    """Long-poll clients by project: counted while one of their polls waits, and :data:`POLL_GRACE` after."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: project -> client -> (polls waiting now, when the last one answered)
        self._seen: dict[str, dict[str, tuple[int, float]]] = {}

    @contextlib.contextmanager
    def polling(self, project_id: str, client: str) -> Iterator[None]:
        """One poll of ``client`` on the project, while inside."""
        clients = self._seen.setdefault(project_id, {})
        waiting, _ = clients.get(client, (0, 0.0))
        clients[client] = (waiting + 1, math.inf)
        try:
            yield
        finally:
            clients = self._seen.setdefault(project_id, {})
            waiting, _ = clients.get(client, (1, 0.0))
            clients[client] = (waiting - 1, self._clock())

    def counts(self) -> dict[str, int]:
        """Long-poll clients per project now; those gone longer than the grace are forgotten."""
        now, counted = self._clock(), {}
        for project_id in list(self._seen):
            clients = self._seen[project_id]
            for client, (waiting, ended) in list(clients.items()):
                if waiting <= 0 and now - ended > POLL_GRACE:
                    del clients[client]
            if clients:
                counted[project_id] = len(clients)
            else:
                del self._seen[project_id]
        return counted


class Presence:
    """This process's watchers, the cluster's totals, and the loop that pushes them."""

    def __init__(self, hub: Hub, store: Store, process: str) -> None:
        self.hub = hub
        self.store = store
        #: the same id the process publishes its connections under
        self.process = process
        self.pollers = Pollers()

    def local(self) -> dict[str, int]:
        """Watchers per project in this process, every transport together."""
        counted: collections.Counter[str] = collections.Counter(self.hub.watcher_counts())
        counted.update(self.pollers.counts())
        return dict(counted)

    async def watching(self, project_id: str) -> int:
        """The project's watchers across the cluster (``watching`` in a project's status)."""
        return (await self._totals([project_id], self.local()))[project_id]

    async def _totals(self, project_ids: list[str], local: dict[str, int]) -> dict[str, int]:
        totals = {project_id: local.get(project_id, 0) for project_id in project_ids}
        if self.store.shared and project_ids:
            with contextlib.suppress(StoreUnavailable):  # while the store is away, this process's count
                elsewhere = await self.store.presence_elsewhere(project_ids, self.process, PRESENCE_MAX_AGE)
                for project_id, count in elsewhere.items():
                    totals[project_id] += count
        return totals

    async def keep_pushing(self) -> None:
        """Every :data:`PUSH_INTERVAL`: publish this process's counts, push the totals that changed."""
        while True:
            try:
                await self.push_once()
            except Exception:  # runs in the app's task group: an error here must not end the app
                logger.exception("could not count the watchers of projects")
            await anyio.sleep(PUSH_INTERVAL)

    async def push_once(self) -> None:
        local = self.local()
        if self.store.shared:
            with contextlib.suppress(StoreUnavailable):
                await self.store.publish_presence(self.process, local, PRESENCE_MAX_AGE)
        followed = self.hub.followed_projects()
        for project_id, watching in (await self._totals(followed, local)).items():
            self.hub.publish_presence(project_id, watching)
