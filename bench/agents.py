"""Agents for the benchmarks."""

from __future__ import annotations

import os
import time
from typing import Any

from jobcast.agents import Cancelled, Context


class Instant:
    """Finishes at once: three transitions (queued, running, completed) per job."""

    name = "instant"

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        return {"project": project_id}


class Busy:
    """Holds a worker for ``--demo-seconds``, reporting as it goes (for responsiveness and polling)."""

    name = "busy"

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        steps = 20
        for step in range(steps):
            ctx.report(percent=100 * step / steps, message=f"step {step}")
            if ctx.sleep(ctx.demo_seconds / steps):
                raise Cancelled
        return {"project": project_id}


class Reporter:
    """Reports progress every ``period`` seconds until cancelled."""

    name = "reporter"
    period = 0.1
    message = "report"

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        step = 0
        while not ctx.sleep(self.period):
            step += 1
            ctx.report(percent=step % 100, message=self.message)
        raise Cancelled


def numbered(base: type[Any], count: int, stem: str | None = None) -> None:
    """Agents ``<stem>0`` .. ``<stem><count - 1>`` (classes ``Stem0`` ..) subclassing ``base``: one job per agent,
    so many of them run at once on one project. ``stem`` is ``base.name`` unless given."""
    stem = stem or base.name
    for index in range(count):
        name = f"{stem.capitalize()}{index}"
        globals()[name] = type(name, (base,), {"name": f"{stem}{index}"})


class Pulse(Reporter):
    """Reports progress as fast as it may (coalesced to ten a second) until cancelled."""

    name, period, message = "pulse", 0.01, "pulse"


class Ticker(Reporter):
    """Reports progress ten times a second until cancelled: a running job, as the mixed scenario has five."""

    name, period, message = "ticker", 0.1, "tick"


PULSE_COUNT = 32
TICKER_COUNT = 5
numbered(Pulse, PULSE_COUNT)  # the sweep runs many pulses on one project
numbered(Ticker, TICKER_COUNT)


class Hold:
    """Holds its thread until the file ``$JOBCAST_BENCH_GATE`` exists: keeps a queue full while it is filled."""

    name = "hold"

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        gate = os.environ["JOBCAST_BENCH_GATE"]
        while not os.path.exists(gate):
            if ctx.sleep(0.005):
                raise Cancelled
        return {"project": project_id}


TICK_COUNT = 5
numbered(
    Instant, TICK_COUNT, "tick"
)  # instant jobs under five names: 100 projects hold 1,000 jobs, each with a follow-up


class Stream50:
    """Streams a stamped piece 50 times a second for ``--demo-seconds``: ``<unix time>;`` and filler,
    about the size of a few LLM tokens, so a subscriber can time each piece from ``ctx.stream`` to it."""

    name = "stream50"

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        pieces = round(ctx.demo_seconds * 50)
        start = time.monotonic()
        for index in range(pieces):
            ctx.stream(f"{time.time():.6f};{'x' * 24}")
            if ctx.sleep(max(0.0, start + (index + 1) / 50 - time.monotonic())):
                raise Cancelled
        return {"pieces": pieces}
