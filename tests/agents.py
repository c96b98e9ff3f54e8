"""Agents for tests: each does one thing a real agent might, under the test's control.

They are loadable by spec (``--agent tests.agents:GatedAgent``) and keep their gates
on the class, so an in-process test can reach the instance the server made.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, ClassVar

from jobcast.agents import Cancelled, Context


class GatedAgent:
    """Reports 50%, then blocks until the test opens the gate (or the job is cancelled)."""

    name = "gated"
    gate: ClassVar[threading.Event] = threading.Event()
    started: ClassVar[threading.Semaphore] = threading.Semaphore(0)

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        ctx.report(percent=50, message="waiting at the gate")
        type(self).started.release()
        while not type(self).gate.wait(0.01):
            if ctx.cancelled:
                raise Cancelled
        return {"project": project_id, "opened": True}

    @classmethod
    def reset(cls) -> None:
        cls.gate = threading.Event()
        cls.started = threading.Semaphore(0)


class StubbornAgent:
    """Ignores cancellation and its 0.2 s timeout; returns only when the gate opens."""

    name = "stubborn"
    timeout = 0.2
    gate: ClassVar[threading.Event] = threading.Event()
    returned: ClassVar[threading.Event] = threading.Event()

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        type(self).gate.wait(30)
        ctx.report(percent=99, message="too late")
        type(self).returned.set()
        return {"late": True}

    @classmethod
    def reset(cls) -> None:
        cls.gate = threading.Event()
        cls.returned = threading.Event()


class FailingAgent:
    name = "failing"

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        raise ValueError(f"ledger for {project_id} is offline")


class BadResultAgent:
    name = "bad_result"

    def refresh(self, project_id: str, ctx: Context) -> Any:
        return {"when": {1, 2, 3}}


class QuickAgent:
    """Completes at once with a result that names its project."""

    name = "quick"

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        ctx.report(percent=100, message="done")
        return {"project": project_id}


class SleepyAgent:
    """Sleeps ``ctx.demo_seconds`` in one cancellable wait: a job that stays running."""

    name = "sleepy"

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        ctx.report(percent=10, message="sleeping")
        if ctx.sleep(ctx.demo_seconds):
            raise Cancelled
        return {"slept": ctx.demo_seconds}


class NoName:
    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        return {}


class ExplodingInit:
    name = "exploding"

    def __init__(self) -> None:
        raise RuntimeError("no API key")


not_an_agent = 42


class _InstanceAgent:
    name = "instance"

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        return {"from": "instance"}


instance_agent = _InstanceAgent()


class BigAgent:
    """Completes at once with a 256 KiB result: fills a slow reader's socket quickly."""

    name = "big"

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        return {"blob": "x" * 256 * 1024}


class ChattyAgent:
    """Reports progress 300 times in a tight loop, to show reports are coalesced."""

    name = "chatty"

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        for step in range(300):
            ctx.report(percent=step / 3, message=f"step {step}")
            ctx.sleep(0.001)
        return {"steps": 300}


class FileGatedAgent:
    """For tests across processes: reports 50%, then waits until the file ``$JOBCAST_TEST_GATES/<project>`` exists."""

    name = "filegated"

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        gate = Path(os.environ["JOBCAST_TEST_GATES"]) / project_id
        ctx.report(percent=50, message="waiting at the gate")
        while not gate.exists():
            if ctx.sleep(0.01):
                raise Cancelled
        return {"project": project_id, "opened": True}


class _Nap:
    """Sleeps ``ctx.demo_seconds`` (cancellable): many of these, under different names, fill a queue."""

    def __init__(self, name: str, max_running: int = 0) -> None:
        self.name = name
        if max_running:
            self.max_running = max_running

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        if ctx.sleep(ctx.demo_seconds):
            raise Cancelled
        return {"project": project_id, "agent": self.name}


nap_a, nap_b, nap_c, nap_d, nap_e = (_Nap(f"nap_{letter}") for letter in "abcde")
#: an agent whose provider allows two calls at once, across every process
nap_limited = _Nap("nap_limited", max_running=2)
NAPS = tuple(f"tests.agents:nap_{letter}" for letter in "abcde")


class LimitedGatedAgent(GatedAgent):
    """A GatedAgent (the same gate) whose provider allows one call at a time: ``max_running = 1``."""

    name = "gated_limited"
    max_running = 1
