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


class Pulse:
    """Reports progress as fast as it may (coalesced to ten a second) until cancelled."""

    name = "pulse"

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        step = 0
        while not ctx.sleep(0.01):
            step += 1
            ctx.report(percent=step % 100, message="pulse")
        raise Cancelled


PULSE_COUNT = 32

# Pulse0 .. Pulse31: one job per agent, so a sweep can run many pulses on one project.
for _index in range(PULSE_COUNT):
    globals()[f"Pulse{_index}"] = type(f"Pulse{_index}", (Pulse,), {"name": f"pulse{_index}"})


class Ticker:
    """Reports progress ten times a second until cancelled: a running job, as the mixed scenario has five."""

    name = "ticker"

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        step = 0
        while not ctx.sleep(0.1):
            step += 1
            ctx.report(percent=step % 100, message="tick")
        raise Cancelled


TICKER_COUNT = 5

for _index in range(TICKER_COUNT):
    globals()[f"Ticker{_index}"] = type(f"Ticker{_index}", (Ticker,), {"name": f"ticker{_index}"})


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

# Tick0 .. Tick4: instant jobs under five names, so 100 projects hold 1,000 jobs (each with a follow-up).
for _index in range(TICK_COUNT):
    globals()[f"Tick{_index}"] = type(f"Tick{_index}", (Instant,), {"name": f"tick{_index}"})


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
