"""The Redis store beyond the shared contract: many processes, leases, outages and restarts.

Each "process" here is a store instance of its own on one real redis-server; the
end-to-end tests with real ``jobcast serve`` processes are in ``test_scale_out.py``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from jobcast.server.errors import StaleJob, StoreUnavailable
from jobcast.server.jobs import Job, JobError, JobStatus, ProgressUpdate
from jobcast.server.settings import Settings
from jobcast.server.store import JobQuery, redacted, store_for
from jobcast.server.store.redis_store import RedisStore, split_url
from tests.redis_server import RedisServer, redis_server
from tests.support import WAIT, eventually_async

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def opened(url: str, lease_seconds: float = 15.0) -> AsyncIterator[RedisStore]:
    store = store_for(Settings(store=url, lease_seconds=lease_seconds))
    assert isinstance(store, RedisStore)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for this test alone, so it can be stopped and restarted."""
    with redis_server(tmp_path / "redis") as server:
        yield server


async def wait_for(condition: Any) -> None:
    await eventually_async(condition)  # polling Redis from outside: no event to wait on


def test_the_url_carries_a_key_prefix_and_passwords_stay_out_of_logs() -> None:
    """?prefix= namespaces the keys and is not passed to redis-py; a password is redacted for logs."""
    assert split_url("redis://h:6379/2?prefix=team-a") == ("redis://h:6379/2", "team-a:")
    assert split_url("redis://h:6379/0") == ("redis://h:6379/0", "jobcast:")
    assert redacted("redis://user:s3cret@h:6379/0") == "redis://user:***@h:6379/0"


def test_a_bad_redis_url_is_a_config_error_without_its_password() -> None:
    """A malformed URL stops start-up with one message, and the password is not in it."""
    from jobcast.server.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        store_for(Settings(store="redis://:hunter2-secret@127.0.0.1:63x79/0"))
    assert "hunter2" not in str(refused.value) and ":***@" in str(refused.value)


async def test_two_processes_racing_to_start_get_one_job(redis_server: RedisServer) -> None:
    """100 concurrent creates for one (project, agent), split over two stores, make exactly one job."""
    url = redis_server.url()
    async with opened(url) as a, opened(url) as b:
        results: list[tuple[Job, bool]] = []

        async def start(store: RedisStore) -> None:
            results.append(await store.create_job(Job.new("race", "financial")))

        async with anyio.create_task_group() as tasks:
            for index in range(100):
                tasks.start_soon(start, a if index % 2 else b)
        assert await a.last_seq("race") == 1
    assert len({job.job_id for job, _ in results}) == 1
    assert sum(not deduplicated for _, deduplicated in results) == 1


async def test_a_cursor_means_the_same_on_every_process(redis_server: RedisServer) -> None:
    """Events written through one store read back identically, same epoch and seqs, through another."""
    url = redis_server.url()
    async with opened(url) as a, opened(url) as b:
        job, _ = await a.create_job(Job.new("p", "x"))
        await b.update_job(job.transition(JobStatus.RUNNING), JobStatus.QUEUED)
        assert a.epoch == b.epoch
        assert [(e.seq, e.job.status) for e in await a.events_after("p", 0, 10)] == [
            (1, JobStatus.QUEUED),
            (2, JobStatus.RUNNING),
        ]
        assert [e.to_dict() for e in await b.events_after("p", 1, 10)] == [
            e.to_dict() for e in await a.events_after("p", 1, 10)
        ]


async def test_progress_from_one_process_reaches_another_processes_reader(redis_server: RedisServer) -> None:
    """The follower returns the log's events and progress published by another process."""
    url = redis_server.url()
    async with opened(url) as a, opened(url) as b:
        follower = b.follower("p")
        job, _ = await a.create_job(Job.new("p", "x"))
        events, progress, _ = await follower.next(0, 10)
        assert [e.job.job_id for e in events] == [job.job_id] and progress == []
        update = ProgressUpdate(
            project_id="p", agent="x", job_id=job.job_id, seq=1, started_at=1.0, percent=40, message="m"
        )
        await a.publish_progress(update)
        with anyio.fail_after(WAIT):
            events, progress, _ = await follower.next(1, 10)
        assert events == [] and progress == [update]


async def test_an_orphan_is_found_once_its_lease_expires_and_never_finished_twice(redis_server: RedisServer) -> None:
    """A job whose process stops renewing is an orphan for others; the lost process learns it lost the job."""
    url = redis_server.url()
    async with opened(url, lease_seconds=1.0) as dead, opened(url, lease_seconds=1.0) as survivor:
        job, _ = await dead.create_job(Job.new("p", "x"))
        running = (await dead.update_job(job.transition(JobStatus.RUNNING), JobStatus.QUEUED)).job
        assert await survivor.orphaned_jobs() == []  # the lease is fresh

        async def orphaned() -> bool:
            return [j.job_id for j in await survivor.orphaned_jobs()] == [job.job_id]

        await wait_for(orphaned)  # the lease expires
        interrupted = running.transition(JobStatus.FAILED, error=JobError(code="interrupted", message="lost"))
        await survivor.update_job(interrupted, JobStatus.RUNNING)
        # The "dead" process comes back: its lease is gone and its late result is refused.
        assert (await dead.renew_leases([job.job_id])).lost == {job.job_id}
        with pytest.raises(StaleJob):
            await dead.update_job(running.transition(JobStatus.COMPLETED, result={}), JobStatus.RUNNING)
        assert (await survivor.get_job(job.job_id)).status is JobStatus.FAILED  # type: ignore[union-attr]
        assert await survivor.orphaned_jobs() == []


async def test_renewing_keeps_a_job_and_carries_cancels_asked_elsewhere(redis_server: RedisServer) -> None:
    """A renewed lease never expires; a cancel requested through another process shows up in the renewal."""
    url = redis_server.url()
    async with opened(url, lease_seconds=1.0) as owner, opened(url) as other:
        job, _ = await owner.create_job(Job.new("p", "x"))
        running = (await owner.update_job(job.transition(JobStatus.RUNNING), JobStatus.QUEUED)).job
        with anyio.fail_after(WAIT):
            for _ in range(15):  # 1.5 s: past the lease, renewed every 0.1 s
                report = await owner.renew_leases([job.job_id])
                assert report.lost == set() and report.cancel_requested == set()
                await anyio.sleep(0.1)
        assert await other.orphaned_jobs() == []
        await other.update_job(running.with_cancel_requested(), JobStatus.RUNNING)
        assert (await owner.renew_leases([job.job_id])).cancel_requested == {job.job_id}


async def test_redis_down_means_store_unavailable_at_once_and_one_warning(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis stopped, every call raises StoreUnavailable quickly, logged once; it recovers when Redis returns."""
    async with opened(own_redis.url("outage")) as store:
        await store.create_job(Job.new("p", "x"))
        own_redis.stop()
        caplog.set_level(logging.WARNING, logger="jobcast.server.store.redis_store")
        with anyio.fail_after(WAIT):
            for _ in range(5):
                with pytest.raises(StoreUnavailable):
                    await store.last_seq("p")
            with pytest.raises(StoreUnavailable):
                await store.create_job(Job.new("p", "y"))
        warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(warnings) == 1 and "127.0.0.1" in warnings[0].getMessage()
        own_redis.start()
        with anyio.fail_after(WAIT):
            while True:
                try:
                    await store.last_seq("p")
                    break
                except StoreUnavailable:
                    await anyio.sleep(0.05)  # redis-server is still binding its port
        assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_a_redis_restart_starts_a_new_epoch(own_redis: RedisServer) -> None:
    """Redis came back (here empty): the epoch changes, so no old cursor can resume into a different log."""
    url = own_redis.url("restart")
    async with opened(url) as a, opened(url) as b:
        await a.create_job(Job.new("p", "x"))
        before = a.epoch
        own_redis.stop()
        own_redis.start()
        after_a = await a.check_epoch()
        after_b = await b.check_epoch()
        assert after_a == after_b != before
        assert await a.last_seq("p") == 0  # this server has no persistence: the log is gone
        job, _ = await b.create_job(Job.new("p", "x"))
        [event] = await a.events_after("p", 0, 10)
        assert (event.epoch, event.seq, event.job.job_id) == (after_a, 1, job.job_id)


async def test_the_epoch_survives_while_redis_keeps_running(redis_server: RedisServer) -> None:
    """Reopening a store (a process restart) keeps the epoch, so clients resume exactly."""
    url = redis_server.url()
    async with opened(url) as first:
        await first.create_job(Job.new("p", "x"))
        epoch = first.epoch
    async with opened(url) as second:
        assert await second.check_epoch() == epoch
        assert await second.last_seq("p") == 1


async def test_a_missing_redis_py_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the redis extra installed, a redis:// store names the extra to install."""
    import sys

    from jobcast.server.errors import ConfigError

    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    monkeypatch.delitem(sys.modules, "jobcast.server.store.redis_store", raising=False)
    with pytest.raises(ConfigError, match=r"jobcast\[redis\]"):
        store_for(Settings(store="redis://127.0.0.1:6379/0"))


async def test_a_follower_returns_when_the_epoch_changes_under_it(redis_server: RedisServer) -> None:
    """Redis came back empty between a channel's start and its first read: the follower returns, not waits forever."""
    import redis

    prefix = "test-follower-epoch"
    async with opened(redis_server.url(prefix)) as store, opened(redis_server.url(prefix)) as other:
        for index in range(5):
            await store.create_job(Job.new("p", f"a{index}"))
        epoch, cursor = store.epoch, await store.last_seq("p")
        follower = store.follower("p")
        admin = redis.Redis(port=redis_server.port)
        try:
            admin.delete(*admin.keys(f"{prefix}:*"))  # as if Redis restarted empty
        finally:
            admin.close()
        await store.check_epoch()  # what a lease round or a reconnect does
        await other.create_job(Job.new("p", "b"))  # seq 1 of the new log, below the old cursor
        with anyio.fail_after(WAIT):
            events, progress, _ = await follower.next(cursor, 10)
    assert store.epoch != epoch and (events, progress) == ([], [])


async def test_redis_out_of_memory_is_an_outage_not_a_crash(own_redis: RedisServer) -> None:
    """A Redis at its maxmemory refuses writes: that is StoreUnavailable (503), and writes work once it has room."""
    import redis

    admin = redis.Redis(port=own_redis.port)
    try:
        async with opened(own_redis.url("oom")) as store:
            await store.create_job(Job.new("p", "x"))
            admin.config_set("maxmemory", 1)
            with pytest.raises(StoreUnavailable):
                await store.create_job(Job.new("p", "y"))
            admin.config_set("maxmemory", 0)
            _, deduplicated = await store.create_job(Job.new("p", "y"))
            assert not deduplicated
    finally:
        admin.close()


async def test_another_processs_progress_is_kept_only_while_a_channel_follows_it(redis_server: RedisServer) -> None:
    """The hub keeps remote progress for long-polls while it follows the project, and forgets it when it stops."""
    from jobcast.server.hub import Hub

    url = redis_server.url()
    async with opened(url) as here, opened(url) as elsewhere, anyio.create_task_group() as tasks:
        hub = Hub(here, tasks, send_buffer=100)
        job, _ = await elsewhere.create_job(Job.new("p", "x"))
        running = (await elsewhere.update_job(job.transition(JobStatus.RUNNING), JobStatus.QUEUED)).job
        update = ProgressUpdate(
            project_id="p", agent="x", job_id=job.job_id, seq=2, started_at=1.0, percent=40, message="m"
        )
        async with hub.subscribe("p"):
            await elsewhere.publish_progress(update)
            await eventually_async(lambda: hub.latest_progress("p"))
        assert hub.latest_progress("p") == []  # nobody follows p here any more: nothing says when the job ends
        async with hub.subscribe("p"):
            await elsewhere.publish_progress(update)
            await eventually_async(lambda: hub.latest_progress("p"))
            await elsewhere.update_job(running.transition(JobStatus.COMPLETED, result={}), JobStatus.RUNNING)
            await eventually_async(lambda: not hub.latest_progress("p"))  # the final event clears it
        tasks.cancel_scope.cancel()


async def test_a_redis_that_cannot_save_to_a_full_disk_is_an_outage(tmp_path: Path) -> None:
    """Redis refuses writes with MISCONF once a snapshot failed on a full disk: StoreUnavailable (503), not a
    crash; writes work again once it has saved."""
    import redis

    from tests.disk import small_disk
    from tests.redis_server import RedisServer
    from tests.servers import free_port

    with small_disk(tmp_path / "disk", size="2m") as disk:
        server = RedisServer(disk.path, free_port())
        server.start()
        admin = redis.Redis(port=server.port)
        try:
            admin.config_set("save", "3600 1")  # snapshots on, as a Redis that persists has them
            async with opened(f"{server.base_url}?prefix=misconf") as store:
                await store.create_job(Job.new("p", "x"))
                disk.fill()
                admin.bgsave()
                await eventually_async(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "err")
                with pytest.raises(StoreUnavailable):
                    await store.create_job(Job.new("p", "y"))
                disk.free()
                admin.bgsave()
                await eventually_async(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "ok")
                _, deduplicated = await store.create_job(Job.new("p", "y"))
                assert not deduplicated
        finally:
            admin.close()
            server.stop()


async def test_a_queued_job_an_older_version_left_joins_the_queue_at_open(redis_server: RedisServer) -> None:
    """Before the scheduler, Redis kept no queue index: such a job is indexed when a process opens the store."""
    import json

    import redis.asyncio as aioredis

    url = redis_server.url()
    job = Job.new("old", "x")
    prefix = url.rpartition("prefix=")[2].rstrip(":") + ":" if "prefix=" in url else "jobcast:"
    client = aioredis.Redis.from_url(url.partition("?")[0], decode_responses=True)
    try:
        await client.hset(
            f"{prefix}job:{job.job_id}", mapping={"status": "queued", "record": json.dumps(job.to_record())}
        )
        await client.sadd(f"{prefix}active", job.job_id)
        await client.hset(f"{prefix}active:old", "x", job.job_id)
    finally:
        await client.aclose()
    async with opened(url) as store:
        assert [queued.job_id for queued in (await store.queue_state()).queued] == [job.job_id]


async def test_history_an_older_jobcast_wrote_joins_the_index_across_projects(redis_server: RedisServer) -> None:
    """An older jobcast kept history per project only: opening the store indexes it for GET /api/jobs."""
    url = redis_server.url()
    async with opened(url) as store:
        made = [(await store.create_job(Job.new(project, "financial")))[0] for project in ("p1", "p2", "p3")]
        await store.client.delete(store._key("hist"))  # as an older jobcast left it
        assert await store.find_jobs(JobQuery()) == []
    async with opened(url) as store:
        found = await store.find_jobs(JobQuery())
    assert [job.job_id for job in found] == [job.job_id for job in reversed(made)]
