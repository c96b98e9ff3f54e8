"""What the tests share, in one place: the wait scale, waiting for a condition, reading messages and logs.

Every wait is bounded by a multiple of :data:`WAIT`. A test waits on an event where one
exists; where only a state can be looked at (a counter, a log file, an HTTP answer),
:func:`eventually` looks until it holds, and fails with what it saw last.
"""

from __future__ import annotations

import inspect
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import pytest
from websockets.asyncio.client import ClientConnection

from jobcast.server.jobs import Job
from jobcast.server.store import Store

T = TypeVar("T")

#: Every wait in the suite is a multiple of this, so a slow machine can scale them all.
WAIT = 10.0 * float(os.environ.get("JOBCAST_TEST_WAIT_SCALE", "1"))
#: How often :func:`eventually` looks again.
POLL_SECONDS = 0.02


def require_program(path: str, missing: str) -> None:
    """A program the tests drive (Chromium, redis-server): in CI its absence fails the run, elsewhere it skips."""
    if not os.path.exists(path):
        unavailable(missing)


def unavailable(reason: str) -> None:
    """Something a test needs is missing from this machine: in CI that fails the run, elsewhere the test skips."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def eventually(check: Callable[[], T], *, timeout: float = WAIT, what: str = "the condition") -> T:
    """Look with ``check`` until it returns something truthy, and return that; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout:g} s; last seen: {value!r}")
        time.sleep(POLL_SECONDS)
    return value


async def eventually_async(
    check: Callable[[], T | Awaitable[T]], *, timeout: float = WAIT, what: str = "the condition"
) -> T:
    """:func:`eventually` for a test's event loop; ``check`` may be a coroutine function."""
    value: Any = None
    with anyio.move_on_after(timeout):
        while True:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value  # type: ignore[no-any-return]
            await anyio.sleep(POLL_SECONDS)
    raise AssertionError(f"{what} did not hold within {timeout:g} s; last seen: {value!r}")


# -- messages ---------------------------------------------------------------------------------


async def receive(connection: ClientConnection) -> dict[str, Any]:
    """The next message of a WebSocket, as JSON, within WAIT."""
    with anyio.fail_after(WAIT):
        message: dict[str, Any] = json.loads(await connection.recv())
        return message


async def receive_until(connection: ClientConnection, predicate: Any) -> list[dict[str, Any]]:
    """Every message up to and including the first that satisfies ``predicate``."""
    seen = []
    while True:
        message = await receive(connection)
        seen.append(message)
        if predicate(message):
            return seen


# -- logs ---------------------------------------------------------------------------------------


def lines_with(text: str, *needles: str) -> list[str]:
    """The lines of a log that hold every one of ``needles``."""
    return [line for line in text.splitlines() if all(needle in line for needle in needles)]


async def wait_for_log(read: Callable[[], str], *needles: str, count: int = 1) -> list[str]:
    """A server writes its log line just after it answers: wait for ``count`` lines rather than race them."""
    return await eventually_async(
        lambda: found if len(found := lines_with(read(), *needles)) >= count else [],
        what=f"{count} log line(s) with {needles}",
    )


def record_texts(caplog: pytest.LogCaptureFixture) -> str:
    """What an in-process app logged so far, one record a line (for :func:`wait_for_log`)."""
    return "\n".join(record.getMessage() for record in caplog.records)


# -- jobs ------------------------------------------------------------------------------------------


async def wait_for_job(store: Store, job_id: str, condition: Callable[[Job], bool]) -> Job:
    """Wait, on the store's change feed, until the job's record satisfies ``condition``."""
    with anyio.fail_after(WAIT):
        job = await store.get_job(job_id)
        assert job is not None, f"no job {job_id}"
        while True:
            seq = await store.last_seq(job.project_id)  # before the read: a change after it still wakes us
            job = await store.get_job(job_id)
            assert job is not None, f"no job {job_id}"
            if condition(job):
                return job
            await store.wait_for_events(job.project_id, seq, WAIT)


def status_is(*statuses: str) -> Callable[[Job], bool]:
    return lambda job: job.status.value in statuses


ALL_TEST_AGENTS = (
    "tests.agents:GatedAgent",
    "tests.agents:StubbornAgent",
    "tests.agents:FailingAgent",
    "tests.agents:BadResultAgent",
    "tests.agents:QuickAgent",
    "tests.agents:SleepyAgent",
    "tests.agents:BigAgent",
    "tests.agents:ChattyAgent",
    "jobcast.agents.builtin:FinancialAgent",
    "jobcast.agents.builtin:PerformanceAgent",
)
