"""The job engine, in-process: single flight, workers, timeouts, cancellation, agent errors."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import pytest

from jobcast.server.engine import next_publish_at
from tests.agents import GatedAgent, StubbornAgent
from tests.support import WAIT, eventually_async, status_is

pytestmark = pytest.mark.anyio

MakeApp = Callable[..., Any]


async def gate_started(count: int = 1) -> None:
    """Wait until ``count`` GatedAgent runs have reached their gate."""
    for _ in range(count):
        assert await anyio.to_thread.run_sync(GatedAgent.started.acquire, True, WAIT)


async def test_a_job_runs_to_completion(make_app: MakeApp) -> None:
    """A started job is queued, runs in a thread, and completes with the agent's result."""
    async with make_app() as app:
        response = await app.http.post("/api/projects/p1/agents/quick/refresh")
        assert response.status_code == 202
        body = response.json()
        assert body["deduplicated"] is False and body["job"]["status"] == "queued"
        job = await app.wait_for(body["job"]["job_id"], status_is("completed"))
        assert job.result == {"project": "p1"}
        assert job.progress.percent == 100
        events = await app.engine.store.events_after("p1", 0, 10)
        assert [e.job.status.value for e in events] == ["queued", "running", "completed"]


async def test_single_flight_per_project_and_agent(make_app: MakeApp) -> None:
    """A second start while one is active returns that job; other agents run alongside."""
    async with make_app() as app:
        first = (await app.http.post("/api/projects/p1/agents/gated/refresh")).json()["job"]
        await gate_started()
        again = await app.http.post("/api/projects/p1/agents/gated/refresh")
        assert again.status_code == 200
        assert again.json()["deduplicated"] is True
        assert again.json()["job"]["job_id"] == first["job_id"]
        other = await app.http.post("/api/projects/p1/agents/quick/refresh")
        assert other.status_code == 202
        await app.wait_for(other.json()["job"]["job_id"], status_is("completed"))
        GatedAgent.gate.set()
        await app.wait_for(first["job_id"], status_is("completed"))
        history = (await app.http.get("/api/projects/p1/jobs?agent=gated")).json()["jobs"]
        assert len(history) == 1  # the duplicate never became a job


async def test_concurrent_starts_make_one_job(make_app: MakeApp) -> None:
    """Twenty simultaneous starts for one pair produce exactly one job."""
    async with make_app() as app:
        replies: list[Any] = []

        async def start() -> None:
            replies.append((await app.http.post("/api/projects/p1/agents/gated/refresh")).json())

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(start)
        assert len({r["job"]["job_id"] for r in replies}) == 1
        assert sum(not r["deduplicated"] for r in replies) == 1
        GatedAgent.gate.set()


async def test_reads_answer_while_every_worker_is_busy(make_app: MakeApp) -> None:
    """With all workers blocked in agent threads, GET endpoints still answer and new jobs queue."""
    async with make_app(threads=2) as app:
        for project in ("p1", "p2"):
            await app.http.post(f"/api/projects/{project}/agents/gated/refresh")
        await gate_started(2)
        queued = (await app.http.post("/api/projects/p3/agents/gated/refresh")).json()["job"]
        with anyio.fail_after(WAIT):  # a blocked loop would never answer
            health = (await app.http.get("/healthz")).json()
            status = await app.http.get("/api/projects/p1")
            legacy = await app.http.get("/gated_agent/processing_status/p3")
        assert health["busy_threads"] == 2
        assert status.json()["agents"]["gated"]["job"]["status"] == "running"
        assert legacy.json()["job_status"] == "queued"
        assert (await app.engine.store.get_job(queued["job_id"])).status.value == "queued"  # type: ignore[union-attr]
        GatedAgent.gate.set()
        await app.wait_for(queued["job_id"], status_is("completed"))


async def test_a_timeout_is_on_time_even_if_the_thread_ignores_it(make_app: MakeApp) -> None:
    """The job times out at its limit; the late result is discarded and the slot stays busy until the thread returns."""
    async with make_app(threads=1) as app:
        job = (await app.http.post("/api/projects/p1/agents/stubborn/refresh")).json()["job"]
        timed_out = await app.wait_for(job["job_id"], status_is("timed_out"))
        assert timed_out.error is not None and timed_out.error.code == "timed_out"
        assert "0.2 s" in timed_out.error.message
        assert app.engine.busy_threads == 1  # the thread has not returned yet
        seq_at_timeout = await app.engine.store.last_seq("p1")

        StubbornAgent.gate.set()
        assert await anyio.to_thread.run_sync(StubbornAgent.returned.wait, WAIT)
        await eventually_async(lambda: app.engine.busy_threads == 0)
        final = await app.engine.store.get_job(job["job_id"])
        assert final is not None and final.status.value == "timed_out" and final.result is None
        assert await app.engine.store.last_seq("p1") == seq_at_timeout  # nothing after the final state


async def test_cancelling_a_queued_job_is_immediate(make_app: MakeApp) -> None:
    """A queued job is cancelled at once and never runs."""
    async with make_app(threads=1) as app:
        await app.http.post("/api/projects/p1/agents/gated/refresh")
        await gate_started()
        queued = (await app.http.post("/api/projects/p2/agents/gated/refresh")).json()["job"]
        response = await app.http.post("/api/projects/p2/agents/gated/cancel")
        assert response.status_code == 202
        job = response.json()["job"]
        assert job["status"] == "cancelled" and job["cancel_requested"] is True
        assert job["started_at"] is None and job["error"]["code"] == "cancelled"
        GatedAgent.gate.set()
        final = await app.wait_for(queued["job_id"], status_is("cancelled", "running", "completed"))
        assert final.status.value == "cancelled"


async def test_cancelling_a_running_job_shows_at_once_then_stops_it(make_app: MakeApp) -> None:
    """cancel_requested is visible immediately; the job is cancelled when the agent checks."""
    async with make_app() as app:
        job = (await app.http.post("/api/projects/p1/agents/gated/refresh")).json()["job"]
        await gate_started()
        response = await app.http.post("/api/projects/p1/agents/gated/cancel")
        assert response.status_code == 202
        assert response.json()["job"]["cancel_requested"] is True
        final = await app.wait_for(job["job_id"], status_is("cancelled", "completed", "failed"))
        assert final.status.value == "cancelled"
        assert final.error is not None and final.error.code == "cancelled"
        again = await app.http.post("/api/projects/p1/agents/gated/cancel")  # cancel is idempotent
        assert again.status_code == 200 and again.json()["job"]["job_id"] == job["job_id"]
        assert again.json()["job"]["status"] == "cancelled"


async def test_the_builtin_agents_stop_between_steps_when_cancelled(make_app: MakeApp) -> None:
    """A built-in agent checks ctx.cancelled between steps and ends cancelled."""
    async with make_app(demo_seconds=30) as app:
        job = (await app.http.post("/api/projects/p1/agents/financial/refresh")).json()["job"]
        await app.wait_for(job["job_id"], status_is("running"))
        await app.http.post("/api/projects/p1/agents/financial/cancel")
        final = await app.wait_for(job["job_id"], status_is("cancelled", "completed"))
        assert final.status.value == "cancelled"


async def test_an_agent_exception_fails_the_job_without_a_traceback(
    make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    """The job fails with agent_error and the message; the traceback goes to the server log only."""
    caplog.set_level(logging.ERROR)
    async with make_app() as app:
        job = (await app.http.post("/api/projects/p1/agents/failing/refresh")).json()["job"]
        await app.wait_for(job["job_id"], status_is("failed"))
        body = (await app.http.get(f"/api/jobs/{job['job_id']}")).json()
        assert body["error"] == {"code": "agent_error", "message": "ledger for p1 is offline"}
        assert "Traceback" not in str(body)
        legacy = (await app.http.get("/failing_agent/processing_status/p1")).json()
        assert legacy["status"] == "failed" and legacy["error"] == "ledger for p1 is offline"
    assert any(record.exc_info for record in caplog.records if "failing" in record.getMessage())


async def test_a_result_that_is_not_json_fails_the_job(make_app: MakeApp) -> None:
    """A result that cannot be serialised fails with invalid_result rather than breaking readers."""
    async with make_app() as app:
        job = (await app.http.post("/api/projects/p1/agents/bad_result/refresh")).json()["job"]
        failed = await app.wait_for(job["job_id"], status_is("failed"))
        assert failed.error is not None and failed.error.code == "invalid_result"


async def test_shutdown_fails_running_jobs_as_interrupted(make_app: MakeApp) -> None:
    """A job still running when the app stops is failed with code interrupted, not left running."""
    async with make_app() as app:
        job = (await app.http.post("/api/projects/p1/agents/gated/refresh")).json()["job"]
        await gate_started()
        store = app.engine.store
    final = await store.get_job(job["job_id"])
    assert final is not None and final.status.value == "failed"
    assert final.error is not None and final.error.code == "interrupted"


async def test_an_outcome_for_a_job_the_store_lost_is_logged_plainly(
    make_app: MakeApp, redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis flushed under a running job: its outcome is discarded with a line that says the job is gone."""
    import redis

    prefix = f"lost-{uuid.uuid4().hex[:8]}"
    async with make_app(store=redis_server.url(prefix)) as app:
        job = (await app.http.post("/api/projects/p1/agents/gated/refresh")).json()["job"]
        await gate_started()
        with redis.Redis.from_url(redis_server.base_url) as direct:
            direct.delete(*direct.keys(f"{prefix}:*"))  # as if Redis came back empty, for this test's keys only
        with caplog.at_level(logging.INFO, logger="jobcast.server.engine"):
            GatedAgent.gate.set()
            await eventually_async(lambda: app.engine.busy_threads == 0)
    lines = [record.getMessage() for record in caplog.records if record.name == "jobcast.server.engine"]
    assert f"job {job['job_id']} is gone from the store; discarding its completed outcome" in lines
    assert not any("already None" in line for line in lines)


def test_progress_is_paced_on_a_grid_so_late_wake_ups_keep_the_rate() -> None:
    """Ten a second: a wake-up 40 ms late shortens the next wait; a missed slot or an idle job starts over."""
    spacing = 0.1
    assert next_publish_at(previous=1.0, now=1.04, spacing=spacing) == pytest.approx(1.1)
    slots = [0.0]
    for late in (0.03, 0.09, 0.01, 0.05):  # each wake-up comes late, but within its slot
        slots.append(next_publish_at(slots[-1], slots[-1] + late, spacing))
    assert slots == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert next_publish_at(previous=1.0, now=1.25, spacing=spacing) == pytest.approx(1.35)  # a slot was missed
    assert next_publish_at(previous=1.0, now=30.0, spacing=spacing) == pytest.approx(30.1)  # it had gone quiet
