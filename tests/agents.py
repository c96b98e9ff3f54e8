"""Agents for tests: each does one thing a real agent might, under the test's control.

They are loadable by spec (``--agent tests.agents:GatedAgent``) and keep their gates
on the class, so an in-process test can reach the instance the server made.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from jobcast.agents import Cancelled, ChatAgent, Context, Retry, Transient


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
        began = time.time()  # when the agent really ran: what a limit on running jobs bounds
        if ctx.sleep(ctx.demo_seconds):
            raise Cancelled
        return {"project": project_id, "agent": self.name, "ran": [began, time.time()]}


nap_a, nap_b, nap_c, nap_d, nap_e = (_Nap(f"nap_{letter}") for letter in "abcde")
#: an agent whose provider allows two calls at once, across every process
nap_limited = _Nap("nap_limited", max_running=2)
NAPS = tuple(f"tests.agents:nap_{letter}" for letter in "abcde")


class LimitedGatedAgent(GatedAgent):
    """A GatedAgent (the same gate) whose provider allows one call at a time: ``max_running = 1``."""

    name = "gated_limited"
    max_running = 1


class FlakyAgent:
    """Fails twice in a way worth retrying (the provider asks for 0.5 s the first time), then succeeds."""

    name = "flaky"
    retry = Retry(attempts=3, backoff=0.2, max_backoff=0.3)
    calls: ClassVar[dict[str, int]] = {}

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        calls = type(self).calls[project_id] = type(self).calls.get(project_id, 0) + 1
        if calls == 1:
            raise Transient("provider overloaded", retry_after=0.5)
        if calls == 2:
            raise Transient("connection dropped")
        return {"attempts": calls}


class OverloadedAgent:
    """Always overloaded; the provider asks to come back in ``retry_after`` (class attribute) seconds."""

    name = "overloaded"
    retry = Retry(attempts=2, backoff=0.05)
    retry_after: ClassVar[float | None] = None

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        raise Transient("provider overloaded", retry_after=type(self).retry_after)


class PermanentAgent:
    """Has a retry policy, but fails in a way no retry fixes."""

    name = "permanent"
    retry = Retry(attempts=3, backoff=0.05)

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        raise ValueError("invalid API key")


class HangingAgent:
    """Runs past its 0.3 s timeout every time; retried on timeout, once."""

    name = "hanging"
    timeout = 0.3
    retry = Retry(attempts=2, backoff=0.05, on_timeout=True)

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        if ctx.sleep(30):
            raise Cancelled
        return {}


class HangingOnceAgent(HangingAgent):
    """The same, with timeouts not retried."""

    name = "hanging_once"
    retry = Retry(attempts=2, backoff=0.05, on_timeout=False)


class DeafAgent:
    """Registers ``ctx.on_cancel`` (it records when it ran), then ignores the cancel until the gate opens."""

    name = "deaf"
    gate: ClassVar[threading.Event] = threading.Event()
    heard: ClassVar[threading.Event] = threading.Event()
    started: ClassVar[threading.Event] = threading.Event()

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        ctx.on_cancel(type(self).heard.set)
        type(self).started.set()
        type(self).gate.wait(30)
        return {"late": True}

    @classmethod
    def reset(cls) -> None:
        cls.gate, cls.heard, cls.started = threading.Event(), threading.Event(), threading.Event()


class IdempotentFileGatedAgent(FileGatedAgent):
    """A FileGatedAgent that is safe to run again: its job survives its process."""

    name = "filegated_idem"
    idempotent = True


class TimedAgent:
    """Takes ``seconds`` (class attribute), reporting its percent ten times on the way."""

    name = "timed"
    seconds: ClassVar[float] = 0.3

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        for step in range(10):
            ctx.report(percent=step * 10)
            if ctx.sleep(type(self).seconds / 10):
                raise Cancelled
        return {"took": type(self).seconds}


def streamed_piece(index: int) -> str:
    """The StreamingAgent's piece ``index``: ASCII and not, so offsets count characters, not bytes."""
    return f"{index:04d}{'é' if index % 7 == 0 else '-'}|"


STREAMED_TEXT = "".join(streamed_piece(index) for index in range(2000))


class StreamingAgent:
    """Streams 2,000 pieces: 1,000, then it waits at ``gate`` (``halfway`` is set), then 1,000 more.

    For tests across processes the gate is a file: with ``$JOBCAST_TEST_GATES`` set it writes
    ``halfway-<project>`` and waits for ``<project>``.
    """

    name = "streaming"
    gate: ClassVar[threading.Event] = threading.Event()
    halfway: ClassVar[threading.Event] = threading.Event()

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        folder = os.environ.get("JOBCAST_TEST_GATES")
        for index in range(2000):
            if index == 1000:
                self._wait_halfway(project_id, ctx, folder)
            ctx.stream(streamed_piece(index))
            if index % 50 == 0 and ctx.sleep(0.001):
                raise Cancelled
        return {"pieces": 2000}

    def _wait_halfway(self, project_id: str, ctx: Context, folder: str | None) -> None:
        if folder is None:
            type(self).halfway.set()
            while not type(self).gate.wait(0.01):
                if ctx.cancelled:
                    raise Cancelled
            return
        (Path(folder) / f"halfway-{project_id}").touch()
        while not (Path(folder) / project_id).exists():
            if ctx.sleep(0.01):
                raise Cancelled

    @classmethod
    def reset(cls) -> None:
        cls.gate, cls.halfway = threading.Event(), threading.Event()


class SlowChatAgent(ChatAgent):
    """A ChatAgent (the fake provider's ``slow`` model, no retries) for cancelling mid-stream."""

    name = "slowchat"
    retry = Retry(attempts=1)

    def __init__(self) -> None:
        super().__init__(model="slow")
