"""The contract an agent is written against.

An agent is any object with a ``name`` and a ``refresh(project_id, ctx)`` that returns a
JSON-serialisable dict. jobcast calls ``refresh`` in a worker thread, so it may block.
An optional ``timeout`` attribute (seconds) overrides the server's ``--job-timeout``, and
an optional ``max_running`` attribute bounds how many of its jobs run at once across
every process sharing the store (a provider's concurrency cap; see docs/scheduling.md).
An optional ``retry`` (a :class:`Retry`) retries :class:`Transient` failures, and
``idempotent = True`` lets a job whose process died run again instead of ending
``interrupted`` (docs/retries.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable


class Cancelled(Exception):
    """Raise from ``refresh`` to stop early once ``ctx.cancelled`` is true."""


class Transient(Exception):
    """Raise from ``refresh`` for a failure worth another attempt: a 429 or 529 from the provider,
    a dropped connection. Only this (and a timeout, with ``Retry(on_timeout=True)``) is retried,
    and only by an agent with a ``retry`` policy; any other exception fails the job at once.

    ``retry_after``: seconds the provider asked to wait (its ``Retry-After`` or rate-limit reset
    header), if it said; the next attempt waits at least that long.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        valid = retry_after is not None and math.isfinite(retry_after) and retry_after >= 0
        self.retry_after = float(retry_after) if valid and retry_after is not None else None


@dataclasses.dataclass(frozen=True)
class Retry:
    """An agent's retry policy, set as its ``retry`` attribute (none: one attempt, as before).

    The wait before attempt n+1 is ``max(retry_after, uniform(0, backoff * 2**(n-1)))``, the
    random part capped at ``max_backoff`` seconds (full jitter). ``attempts`` counts the first.
    """

    attempts: int = 3
    backoff: float = 1.0
    max_backoff: float = 60.0
    #: retry a job that ran past its timeout, too
    on_timeout: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError("Retry.attempts must be a whole number of at least 1")
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Retry.{name} must be a number of seconds, 0 or more")


class Context(Protocol):
    """What ``refresh`` gets as ``ctx``; safe to use from the worker thread."""

    #: becomes true once the job is cancelled or has timed out
    @property
    def cancelled(self) -> bool: ...

    #: the server's ``--demo-seconds``, for demo and test agents that pretend to work
    @property
    def demo_seconds(self) -> float: ...

    def report(self, percent: float | None = None, message: str | None = None) -> None:
        """Publish progress: a percent from 0 to 100, a step message, or both."""

    def sleep(self, seconds: float) -> bool:
        """Wait up to ``seconds``; return early, with True, once the job is cancelled."""

    def stream(self, text: str) -> None:
        """Append ``text`` to the job's output, which every watcher sees as it comes. Cheap: call it
        for every token; jobcast sends what arrives within about 50 ms as one message."""

    def on_cancel(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` (once, from any thread) the moment the job is cancelled or times out,
        for instance to close an in-flight HTTP stream to the provider; at once if it already is."""


@runtime_checkable
class Agent(Protocol):
    name: str

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]: ...


__all__ = ["Agent", "Cancelled", "Context", "Retry", "Transient"]
