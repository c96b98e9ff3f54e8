"""The store contract, run against every backend: memory:// and sqlite://."""

from __future__ import annotations

import anyio
import pytest

from jobcast.server.errors import StaleJob
from jobcast.server.jobs import Job, JobError, JobStatus, Progress
from jobcast.server.settings import Settings
from jobcast.server.store import JobQuery, Store, store_for
from jobcast.server.store.base import history_key

pytestmark = pytest.mark.anyio


async def test_create_job_appends_the_first_event(store: Store) -> None:
    """A new job is stored as queued and becomes seq 1 of its project's log."""
    job, deduplicated = await store.create_job(Job.new("p1", "financial"))
    assert not deduplicated
    assert await store.get_job(job.job_id) == job
    assert await store.last_seq("p1") == 1
    [event] = await store.events_after("p1", 0, 10)
    assert (event.seq, event.epoch, event.job.job_id) == (1, store.epoch, job.job_id)
    assert event.to_dict()["type"] == "job"


async def test_a_second_create_for_an_active_pair_is_deduplicated(store: Store) -> None:
    """While a (project, agent) has a queued or running job, create returns that job."""
    first, _ = await store.create_job(Job.new("p1", "financial"))
    again, deduplicated = await store.create_job(Job.new("p1", "financial"))
    assert deduplicated and again.job_id == first.job_id
    assert await store.last_seq("p1") == 1  # no event for a deduplicated start
    other, deduplicated = await store.create_job(Job.new("p1", "performance"))
    assert not deduplicated and other.job_id != first.job_id


async def test_a_finished_job_frees_its_pair(store: Store) -> None:
    """Once a job is final, the next create starts a new job."""
    job, _ = await store.create_job(Job.new("p1", "a"))
    running = (await store.update_job(job.transition(JobStatus.RUNNING), JobStatus.QUEUED)).job
    await store.update_job(running.transition(JobStatus.COMPLETED, result={"n": 1}), JobStatus.RUNNING)
    second, deduplicated = await store.create_job(Job.new("p1", "a"))
    assert not deduplicated and second.job_id != job.job_id


async def test_update_is_compare_and_set_on_status(store: Store) -> None:
    """An update whose expected status is stale raises StaleJob and changes nothing."""
    job, _ = await store.create_job(Job.new("p1", "a"))
    running = job.transition(JobStatus.RUNNING)
    await store.update_job(running, JobStatus.QUEUED)
    with pytest.raises(StaleJob):
        await store.update_job(job.transition(JobStatus.CANCELLED), JobStatus.QUEUED)
    timed_out = running.transition(JobStatus.TIMED_OUT, error=JobError(code="timed_out", message="late"))
    await store.update_job(timed_out, JobStatus.RUNNING)
    with pytest.raises(StaleJob):
        await store.update_job(running.transition(JobStatus.COMPLETED, result={}), JobStatus.RUNNING)
    assert (await store.get_job(job.job_id)).status is JobStatus.TIMED_OUT  # type: ignore[union-attr]
    assert await store.last_seq("p1") == 3


async def test_seqs_are_consecutive_per_project(store: Store) -> None:
    """Each project has its own log numbered 1, 2, 3, ... with no gaps."""
    for project in ("p1", "p2", "p1"):
        job, _ = await store.create_job(Job.new(project, f"agent-{project}-{await store.last_seq(project)}"))
    events = await store.events_after("p1", 0, 100)
    assert [e.seq for e in events] == [1, 2]
    assert [e.seq for e in await store.events_after("p2", 0, 100)] == [1]
    assert [e.seq for e in await store.events_after("p1", 1, 100)] == [2]
    assert await store.events_after("p1", 2, 100) == []
    assert await store.last_seq("nobody") == 0


async def test_completed_results_become_the_last_result(store: Store) -> None:
    """A completed job's result is its pair's last result; a failed one leaves it alone."""
    for outcome in ("completed", "failed"):
        job, _ = await store.create_job(Job.new("p1", "a"))
        running = (await store.update_job(job.transition(JobStatus.RUNNING), JobStatus.QUEUED)).job
        if outcome == "completed":
            final = running.transition(JobStatus.COMPLETED, result={"revenue": 10})
        else:
            final = running.transition(JobStatus.FAILED, error=JobError(code="agent_error", message="x"))
        await store.update_job(final, JobStatus.RUNNING)
    results = await store.last_results("p1")
    assert set(results) == {"a"}
    assert results["a"].result == {"revenue": 10}


async def test_latest_job_prefers_the_active_one(store: Store) -> None:
    """latest_job returns the queued or running job, else the newest finished one."""
    assert await store.latest_job("p1", "a") is None
    job, _ = await store.create_job(Job.new("p1", "a"))
    assert (await store.latest_job("p1", "a")).job_id == job.job_id  # type: ignore[union-attr]
    history = await store.list_jobs("p1", None, 10)
    assert [j.job_id for j in history] == [job.job_id]


async def test_history_is_newest_first_and_limited(store: Store) -> None:
    """list_jobs filters by agent, orders newest first and honours the limit."""
    ids = []
    for _ in range(3):
        job, _ = await store.create_job(Job.new("p1", "a"))
        cancelled = job.transition(JobStatus.CANCELLED, error=JobError(code="cancelled", message="x"))
        await store.update_job(cancelled, JobStatus.QUEUED)
        ids.append(job.job_id)
    await store.create_job(Job.new("p1", "b"))
    assert [j.job_id for j in await store.list_jobs("p1", "a", 10)] == ids[::-1]
    assert [j.job_id for j in await store.list_jobs("p1", "a", 2)] == ids[:0:-1]
    assert len(await store.list_jobs("p1", None, 10)) == 4


async def test_progress_is_recorded_without_an_event(store: Store) -> None:
    """set_progress changes a running job's record but not the log."""
    job, _ = await store.create_job(Job.new("p1", "a"))
    await store.update_job(job.transition(JobStatus.RUNNING), JobStatus.QUEUED)
    await store.set_progress(job.job_id, Progress(percent=40, message="asking the model"))
    stored = await store.get_job(job.job_id)
    assert stored is not None and stored.progress == Progress(percent=40, message="asking the model")
    assert await store.last_seq("p1") == 2


async def test_active_jobs_and_projects(store: Store) -> None:
    """active_jobs lists every queued or running job; project_ids lists projects with jobs."""
    a, _ = await store.create_job(Job.new("p1", "a"))
    b, _ = await store.create_job(Job.new("p2", "a"))
    await store.update_job(b.transition(JobStatus.RUNNING), JobStatus.QUEUED)
    assert {j.job_id for j in await store.active_jobs()} == {a.job_id, b.job_id}
    assert await store.project_ids() == ["p2", "p1"]


async def test_waiting_for_events_wakes_on_append(store: Store) -> None:
    """wait_for_events returns True once an event lands, and False when the wait runs out."""
    assert not await store.wait_for_events("p1", 0, 0.01)
    woke: list[bool] = []
    async with anyio.create_task_group() as tg:

        async def waiter() -> None:
            woke.append(await store.wait_for_events("p1", 0, 10))

        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        await store.create_job(Job.new("p1", "a"))
    assert woke == [True]


async def test_sqlite_keeps_everything_across_reopen(tmp_path: object) -> None:
    """The SQLite store keeps jobs, results, seqs and its epoch when reopened."""
    url = f"sqlite:///{tmp_path}/keep.db"
    first = store_for(Settings(store=url))
    await first.open()
    job, _ = await first.create_job(Job.new("p1", "a"))
    running = (await first.update_job(job.transition(JobStatus.RUNNING), JobStatus.QUEUED)).job
    await first.update_job(running.transition(JobStatus.COMPLETED, result={"k": 1}), JobStatus.RUNNING)
    epoch = first.epoch
    await first.close()

    second = store_for(Settings(store=url))
    await second.open()
    try:
        assert second.epoch == epoch
        assert (await second.get_job(job.job_id)).status is JobStatus.COMPLETED  # type: ignore[union-attr]
        assert (await second.last_results("p1"))["a"].result == {"k": 1}
        assert await second.last_seq("p1") == 3
    finally:
        await second.close()


async def finished(store: Store, job: Job, status: JobStatus = JobStatus.COMPLETED) -> Job:
    """Run ``job`` to ``status`` and return its final record."""
    running = (await store.update_job(job.transition(JobStatus.RUNNING), JobStatus.QUEUED)).job
    error = None if status is JobStatus.COMPLETED else JobError(code="agent_error", message="no")
    final = running.transition(status, result={} if status is JobStatus.COMPLETED else None, error=error)
    return (await store.update_job(final, JobStatus.RUNNING)).job


async def test_history_across_projects_is_newest_first_and_pages_stay_put_while_jobs_arrive(store: Store) -> None:
    """find_jobs pages by (created_at, job_id): a job created after page 1 never shifts page 2."""
    made = []
    for n in range(7):
        job, _ = await store.create_job(Job.new(f"p{n % 3}", f"agent{n}"))
        made.append(await finished(store, job))
    newest_first = [job.job_id for job in reversed(made)]
    first = await store.find_jobs(JobQuery(limit=3))
    assert [job.job_id for job in first] == newest_first[:3]
    late, _ = await store.create_job(Job.new("p9", "late"))
    second = await store.find_jobs(JobQuery(limit=3, before=history_key(first[-1])))
    third = await store.find_jobs(JobQuery(limit=3, before=history_key(second[-1])))
    assert [job.job_id for job in second + third] == newest_first[3:]
    assert (await store.find_jobs(JobQuery(limit=1)))[0].job_id == late.job_id


async def test_history_filters_by_project_agent_status_and_starter(store: Store) -> None:
    a, _ = await store.create_job(Job.new("p1", "financial", started_by="alice"))
    a = await finished(store, a, JobStatus.FAILED)
    b, _ = await store.create_job(Job.new("p1", "performance", started_by="bob"))
    b = await finished(store, b)
    c, _ = await store.create_job(Job.new("p2", "financial", started_by="alice"))

    async def ids(**filters: object) -> list[str]:
        return [job.job_id for job in await store.find_jobs(JobQuery(**filters))]  # type: ignore[arg-type]

    assert await ids() == [c.job_id, b.job_id, a.job_id]
    assert await ids(projects=frozenset({"p1"})) == [b.job_id, a.job_id]
    assert await ids(projects=frozenset({"p1", "p2"}), agent="financial") == [c.job_id, a.job_id]
    assert await ids(projects=frozenset({"p1"}), agent="financial") == [a.job_id]
    assert await ids(status=JobStatus.FAILED) == [a.job_id]
    assert await ids(status=JobStatus.QUEUED) == [c.job_id]
    assert await ids(started_by="alice") == [c.job_id, a.job_id]
    assert await ids(projects=frozenset({"nobody"})) == []
