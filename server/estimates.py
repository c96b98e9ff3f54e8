"""How long a job will take: the typical duration of its agent, from the store's history.

``expected_s`` is the median of the last 20 completed runs of the same agent for the same
project when there are at least 3, else of the agent across all projects; ``overdue``
comes after the 90th percentile of the same runs. The engine looks them up when a job
starts, caches them briefly, and the job record and its progress messages carry them;
``eta_s`` is worked out from them whenever a record or message is shown
(:func:`server.jobs.eta_fields`). docs/retries.md describes the estimator and its limits.
"""

from __future__ import annotations

import dataclasses
import statistics

import anyio

from .errors import StoreUnavailable
from .store import Store

#: Completed runs an estimate looks at, and how many of one project it needs before it prefers them.
HISTORY = 20
PROJECT_MINIMUM = 3
#: How long a looked-up estimate is reused: other processes' runs reach it after this at most.
CACHE_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class Estimate:
    expected_s: float | None = None
    overdue_after_s: float | None = None


NONE = Estimate()


def estimate_from(durations: list[float]) -> Estimate:
    if not durations:
        return NONE
    ordered = sorted(durations)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return Estimate(expected_s=statistics.median(ordered), overdue_after_s=p90)


class Estimates:
    """The engine's cache of estimates by (agent, project)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[tuple[str, str], tuple[Estimate, float]] = {}

    async def for_job(self, agent: str, project_id: str) -> Estimate:
        key = (agent, project_id)
        cached = self._cache.get(key)
        if cached is not None and cached[1] > anyio.current_time():
            return cached[0]
        try:
            found = await self._look_up(agent, project_id)
        except StoreUnavailable:
            return cached[0] if cached else NONE  # an estimate is a nicety: never hold a start for it
        self._cache[key] = (found, anyio.current_time() + CACHE_SECONDS)
        return found

    async def _look_up(self, agent: str, project_id: str) -> Estimate:
        own = await self.store.durations(agent, project_id, HISTORY)
        if len(own) >= PROJECT_MINIMUM:
            return estimate_from(own)
        return estimate_from(await self.store.durations(agent, None, HISTORY))

    def forget(self, agent: str, project_id: str) -> None:
        """A run of this agent just completed here: the next start looks again."""
        self._cache.pop((agent, project_id), None)
