"""Retries, requeues, a cancel that bites, and the ETA: on memory, SQLite and a real Redis.

Waits are measured on the server's own timestamps (each attempt's start and end in the
job record), with slack for a noisy machine; nothing here sleeps to wait for a state.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from jobcast.agents import Agent
from jobcast.server.jobs import Job, JobStatus
from tests.agents import (
    DeafAgent,
    FlakyAgent,
    HangingAgent,
    HangingOnceAgent,
    OverloadedAgent,
    PermanentAgent,
    TimedAgent,
)
from tests.conftest import Running
from tests.live import live_server
from tests.redis_server import RedisServer
from tests.servers import JobcastServer, jobcast_server, jobcast_worker
from tests.support import WAIT, eventually, eventually_async, status_is

pytestmark = pytest.mark.anyio

MakeApp = Callable[..., contextlib.AbstractAsyncContextManager[Running]]
#: a noisy two-core machine may add this much to any wait the server schedules
SLACK = 1.5


def agents(*made: Agent) -> dict[str, Agent]:
    return {agent.name: agent for agent in made}


AGENTS = agents(FlakyAgent(), OverloadedAgent(), PermanentAgent(), HangingAgent(), HangingOnceAgent(), DeafAgent())


@contextlib.asynccontextmanager
async def retry_app(make_app: MakeApp, store_url: str, **overrides: Any) -> AsyncIterator[Running]:
    async with make_app(agents=AGENTS, store=store_url, **overrides) as app:
        yield app


async def start(app: Running, project: str, agent: str) -> dict[str, Any]:
    response = await app.http.post(f"/api/projects/{project}/agents/{agent}/refresh")
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()["job"]
    return job


async def statuses(app: Running, project: str) -> list[str]:
    return [event.job.status.value for event in await app.engine.store.events_after(project, 0, 100)]


def gaps(job: Job) -> list[float]:
    """Seconds between each attempt's end and the next one's start."""
    return [
        after["started_at"] - before["finished_at"]
        for before, after in zip(job.attempts, job.attempts[1:], strict=False)
    ]


async def test_a_transient_failure_is_retried_as_one_job_honouring_retry_after_and_the_backoff(
    make_app: MakeApp, store_url: str
) -> None:
    async with retry_app(make_app, store_url) as app:
        job = await start(app, "flaky", "flaky")
        assert (job["attempt"], job["max_attempts"]) == (1, 3)
        done = await app.wait_for(job["job_id"], status_is("completed", "failed"))
        assert done.status is JobStatus.COMPLETED and done.result == {"attempts": 3}
        assert await statuses(app, "flaky") == [
            "queued", "running", "retrying", "running", "retrying", "running", "completed",
        ]  # fmt: skip
        assert {event.job.job_id for event in await app.engine.store.events_after("flaky", 0, 100)} == {job["job_id"]}
        assert [entry["status"] for entry in done.attempts] == ["retrying", "retrying", "completed"]
        assert [entry["error"]["message"] for entry in done.attempts[:2]] == [
            "provider overloaded",
            "connection dropped",
        ]
        first, second = gaps(done)
        assert 0.5 <= first < 0.5 + SLACK  # the provider's retry_after
        assert 0 <= second < 0.3 + SLACK  # backoff 0.2 * 2, capped at max_backoff 0.3, with full jitter


async def test_while_retrying_the_record_says_when_and_why(make_app: MakeApp, store_url: str) -> None:
    OverloadedAgent.retry_after = 30
    try:
        async with retry_app(make_app, store_url) as app:
            job = await start(app, "wait", "overloaded")
            waiting = await app.wait_for(job["job_id"], status_is("retrying"))
            record = (await app.http.get(f"/api/jobs/{job['job_id']}")).json()
            assert (record["attempt"], record["max_attempts"]) == (2, 2)
            assert record["error"] == {"code": "transient_error", "message": "provider overloaded"}
            assert waiting.retry_at is not None and 29 < waiting.retry_at - time.time() <= 30
            assert record["queue"]["waiting_for"] == "retry"
            cancelled = await app.http.post("/api/projects/wait/agents/overloaded/cancel")
            assert cancelled.status_code == 202 and cancelled.json()["job"]["status"] == "cancelled"
    finally:
        OverloadedAgent.retry_after = None


async def test_when_the_last_attempt_fails_the_job_fails_with_every_attempt(make_app: MakeApp, store_url: str) -> None:
    async with retry_app(make_app, store_url) as app:
        job = await start(app, "over", "overloaded")
        done = await app.wait_for(job["job_id"], status_is("completed", "failed"))
        assert done.status is JobStatus.FAILED and done.error is not None and done.error.code == "transient_error"
        assert [entry["attempt"] for entry in done.attempts] == [1, 2]
        public = (await app.http.get(f"/api/jobs/{job['job_id']}")).json()["attempts"]
        assert all(entry["started_at"].endswith("Z") and entry["error"]["code"] for entry in public)


async def test_a_permanent_error_is_not_retried(make_app: MakeApp, store_url: str) -> None:
    async with retry_app(make_app, store_url) as app:
        job = await start(app, "perm", "permanent")
        done = await app.wait_for(job["job_id"], status_is("completed", "failed"))
        assert done.error is not None and done.error.code == "agent_error" and len(done.attempts) == 1
        assert "retrying" not in await statuses(app, "perm")


@pytest.mark.parametrize(
    ("agent", "expected"), [("hanging", ["retrying", "timed_out"]), ("hanging_once", ["timed_out"])]
)
async def test_a_timeout_is_retried_only_with_on_timeout(
    make_app: MakeApp, store_url: str, agent: str, expected: list[str]
) -> None:
    async with retry_app(make_app, store_url) as app:
        job = await start(app, agent, agent)
        done = await app.wait_for(job["job_id"], status_is("timed_out", "completed", "failed"))
        assert [entry["status"] for entry in done.attempts] == expected


async def test_on_cancel_runs_before_the_cancel_is_answered_and_a_deaf_agent_is_ended_after_the_grace(
    make_app: MakeApp, store_url: str
) -> None:
    async with retry_app(make_app, store_url, cancel_grace=0.3) as app:
        job = await start(app, "deaf", "deaf")
        assert await anyio.to_thread.run_sync(DeafAgent.started.wait, WAIT)
        cancelled = await app.http.post("/api/projects/deaf/agents/deaf/cancel")
        assert cancelled.status_code == 202
        assert DeafAgent.heard.is_set()  # the agent's callback ran before the answer went out
        again = await app.http.post("/api/projects/deaf/agents/deaf/cancel")
        assert again.status_code == 200 and again.json()["job"]["job_id"] == job["job_id"]  # idempotent
        done = await app.wait_for(job["job_id"], status_is("cancelled", "completed"))
        assert done.status is JobStatus.CANCELLED and done.error is not None and "did not stop" in done.error.message
        assert app.engine.busy_threads == 1  # its thread still runs, and holds its slot
        DeafAgent.gate.set()
        await eventually_async(lambda: app.engine.busy_threads == 0)
        assert (await app.engine.store.get_job(job["job_id"])).status is JobStatus.CANCELLED  # late result discarded


# -- the ETA ------------------------------------------------------------------------------------------


async def test_the_eta_comes_from_the_agents_history_falls_as_it_runs_and_says_when_overdue() -> None:
    async with live_server(agents=["tests.agents:TimedAgent"], progress_interval=0.05) as live:
        TimedAgent.seconds = 0.3
        first = await live.start("eta", "timed")
        assert first["expected_s"] is None  # no history yet
        for _ in range(5):
            job = await live.start("eta", "timed")
            await live.wait_until(lambda job=job: _final(live, job["job_id"]))
        async with live.ws("eta") as ws:
            await ws.recv()  # the snapshot
            job = await live.start("eta", "timed")
            progress = await _progress_until_final(ws, job["job_id"])
        estimates = [message["eta_s"] for message in progress]
        assert progress[0]["expected_s"] is not None and 0.2 <= progress[0]["expected_s"] <= 0.6
        assert estimates[0] > estimates[-1] and all(value >= 0 for value in estimates)
        assert not any(message["overdue"] for message in progress)

        TimedAgent.seconds = 0.9  # three times as long as usual
        async with live.ws("eta") as ws:
            await ws.recv()
            job = await live.start("eta", "timed")
            progress = await _progress_until_final(ws, job["job_id"])
        assert progress[-1]["overdue"] is True and progress[0]["overdue"] is False


async def _final(live: Any, job_id: str) -> bool:
    return bool((await live.http.get(f"/api/jobs/{job_id}")).json()["status"] == "completed")


async def _progress_until_final(ws: Any, job_id: str) -> list[dict[str, Any]]:
    progress: list[dict[str, Any]] = []
    with anyio.fail_after(WAIT):
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "progress" and message["job_id"] == job_id:
                progress.append(message)
            if message["type"] == "job" and message["job"]["status"] == "completed":
                return progress


# -- an idempotent job survives its process ------------------------------------------------------------


def _gated_args(store: str) -> list[str]:
    return [
        "--store", store, "--lease-seconds", "1", "--agent", "tests.agents:IdempotentFileGatedAgent",
        "--agent", "tests.agents:FileGatedAgent",
    ]  # fmt: skip


def _wait_status(server: JobcastServer, job_id: str, *wanted: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        job: dict[str, Any] = httpx.get(f"{server.url}/api/jobs/{job_id}").json()
        return job if job["status"] in wanted else None

    return eventually(check, what=f"job {job_id} {' or '.join(wanted)}")


def test_an_idempotent_job_runs_again_after_a_restart_on_sqlite_and_another_ends_interrupted(tmp_path: Path) -> None:
    args = _gated_args(f"sqlite:///{tmp_path / 'jobs.db'}")
    env = {"JOBCAST_TEST_GATES": str(tmp_path)}
    with jobcast_server(args, tmp_path / "first.log", env) as server:
        again = httpx.post(f"{server.url}/api/projects/idem/agents/filegated_idem/refresh").json()["job"]
        once = httpx.post(f"{server.url}/api/projects/once/agents/filegated/refresh").json()["job"]
        for job in (again, once):
            _wait_status(server, job["job_id"], "running")
        server.kill()
    (tmp_path / "idem").touch()
    with jobcast_server(args, tmp_path / "second.log", env) as server:
        done = _wait_status(server, again["job_id"], "completed", "failed")
        lost = _wait_status(server, once["job_id"], "failed")
    assert done["status"] == "completed" and done["attempt"] == 2
    assert [entry["status"] for entry in done["attempts"]] == ["queued", "completed"]
    assert done["attempts"][0]["error"]["code"] == "interrupted"
    assert lost["error"]["code"] == "interrupted" and lost["attempt"] == 1


def test_an_idempotent_job_is_finished_by_another_process_after_kill_9_on_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    args = _gated_args(redis_server.url())
    env = {"JOBCAST_TEST_GATES": str(tmp_path)}
    with jobcast_server(args, tmp_path / "a.log", env) as a, jobcast_server(args, tmp_path / "b.log", env) as b:
        job = httpx.post(f"{a.url}/api/projects/survive/agents/filegated_idem/refresh").json()["job"]
        running = _wait_status(a, job["job_id"], "running")
        victim, survivor = (a, b) if running["runner"]["pid"] == a.process.pid else (b, a)
        victim.kill()
        (tmp_path / "survive").touch()
        done = _wait_status(survivor, job["job_id"], "completed", "failed")
    assert done["status"] == "completed" and done["runner"]["pid"] == survivor.process.pid
    assert done["attempts"][0]["error"]["code"] == "interrupted" and done["attempt"] == 2


def test_a_cancel_through_another_process_reaches_on_cancel_at_once(redis_server: RedisServer, tmp_path: Path) -> None:
    """The process running the job hears of a cancel asked elsewhere from Redis at once, not at a lease round.

    The lease here is 60 s (a lease round every second), so only the push can make the agent stop in time."""
    env = {"JOBCAST_TEST_GATES": str(tmp_path)}
    args = ["--store", redis_server.url(), "--lease-seconds", "60", "--agent", "tests.agents:FileGatedAgent"]
    with (
        jobcast_server([*args, "--threads", "1"], tmp_path / "a.log", env) as runner,
        jobcast_server([*args, "--threads", "0"], tmp_path / "b.log", env) as other,
    ):
        job = httpx.post(f"{other.url}/api/projects/far/agents/filegated/refresh").json()["job"]
        _wait_status(runner, job["job_id"], "running")
        asked = time.monotonic()
        assert httpx.post(f"{other.url}/api/projects/far/agents/filegated/cancel").status_code == 202
        done = _wait_status(other, job["job_id"], "cancelled")
        took = time.monotonic() - asked
        heard = runner.log
    assert done["cancel_requested"] and done["error"]["message"] == "cancelled on request"
    assert f"job {job['job_id']}: its cancel was asked through another process" in heard  # pushed, not polled
    print(f"cancelled through another process in {took * 1000:.0f} ms")


def test_an_idempotent_job_still_running_past_the_shutdown_grace_is_requeued_for_the_next_worker(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"JOBCAST_TEST_GATES": str(tmp_path)}
    args = _gated_args(redis_server.url())
    with jobcast_server([*args, "--threads", "0"], tmp_path / "serve.log", env) as server:
        with jobcast_worker([*args, "--shutdown-grace", "0.3"], tmp_path / "first.log", env) as first:
            job = httpx.post(f"{server.url}/api/projects/drain/agents/filegated_idem/refresh").json()["job"]
            _wait_status(server, job["job_id"], "running")
            assert first.stop() == 0
        requeued = _wait_status(server, job["job_id"], "queued")
        assert requeued["attempt"] == 2 and requeued["attempts"][0]["error"]["code"] == "interrupted"
        (tmp_path / "drain").touch()
        with jobcast_worker(args, tmp_path / "second.log", env) as second:
            done = _wait_status(server, job["job_id"], "completed")
    assert done["runner"]["pid"] == second.process.pid
