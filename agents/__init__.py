"""The contract an agent is written against.

An agent is any object with a ``name`` and a ``refresh(project_id, ctx)`` that returns a
JSON-serialisable dict. jobcast calls ``refresh`` in a worker thread, so it may block.
An optional ``timeout`` attribute (seconds) overrides the server's ``--job-timeout``, and
an optional ``max_running`` attribute bounds how many of its jobs run at once across
every process sharing the store (a provider's concurrency cap; see docs/scheduling.md).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


class Cancelled(Exception):
    """Raise from ``refresh`` to stop early once ``ctx.cancelled`` is true."""


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


@runtime_checkable
class Agent(Protocol):
    name: str

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]: ...


__all__ = ["Agent", "Cancelled", "Context"]
