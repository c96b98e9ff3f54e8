"""``redis://host:6379/0``: one store for many processes on many hosts.

Everything shared lives in Redis: job records, last results, history, the epoch and
each project's event log, which is a Redis Stream whose entry ids are the seqs
(``7-0`` is seq 7), so order, history and resume come from Redis itself. Every write
is one Lua script, so "one active job per (project, agent)" and the compare-and-set
on status hold across processes.

Jobs carry leases: the process that accepted a job renews it; when a process dies
its leases expire and any survivor fails the job as ``interrupted``.

The epoch is stored with the Redis server's ``run_id``. When Redis restarts, events
may have been lost (it may even come back empty), so the first process to notice
starts a new epoch and every client gets an honest ``recovered: false`` snapshot.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, OutOfMemoryError, ReadOnlyError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import StaleJob, StoreUnavailable
from ..jobs import ACTIVE_STATES, Event, Job, JobStatus, LastResult, Progress, ProgressUpdate, ProjectState
from .base import Follower, LeaseReport, Store, redacted

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Progress entries kept per project: only the newest matter, readers are never far behind.
_PROGRESS_KEEP = 64
#: A blocking read waits this long before it loops, well inside the socket timeout.
_BLOCK_MS = 1000
_SOCKET_TIMEOUT = 5.0
_CONNECT_TIMEOUT = 2.0
#: Every store call ends within this, whatever Redis does (frozen, a long fork, a black hole):
#: waiting for a pooled connection, the epoch check and the command itself all count.
CALL_DEADLINE = 3.0
#: A blocking read is allowed its block time on top.
_READ_DEADLINE = _BLOCK_MS / 1000 + CALL_DEADLINE
#: While Redis is unavailable, one call in this many seconds tries it; the rest fail at once,
#: so requests, progress, leases and readers cannot pile up behind a server that does not answer.
PROBE_INTERVAL = 0.5
#: Connections for commands, per process; more requests at once wait for one (up to the socket timeout).
_COMMAND_CONNECTIONS = 32
#: Connections for blocking reads: one per project with subscribers in this process.
_READER_CONNECTIONS = 100_000
#: Redis cannot take the command now, but may soon: unreachable, loading, out of memory,
#: a read-only replica after a failover, no primary. Each is an outage, answered with 503.
_UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    OutOfMemoryError,
    ReadOnlyError,
    TryAgainError,
    ClusterDownError,
)

#: The job states as the Lua scripts see them, spelled from server/jobs.py.
_STATES = (
    f"local QUEUED, RUNNING = '{JobStatus.QUEUED.value}', '{JobStatus.RUNNING.value}'\n"
    "local ACTIVE = {" + ", ".join(sorted(f"['{status.value}'] = true" for status in ACTIVE_STATES)) + "}\n"
)

#: Error replies that mean "not now" rather than "never": a failed snapshot to disk, a busy script, loading.
_UNAVAILABLE_REPLIES = ("MISCONF", "BUSY", "LOADING", "MASTERDOWN")

_APPEND = """
local function append(p, project, record, updated_at, maxlen)
  local seq = redis.call('INCR', p .. 'seq:' .. project)
  redis.call('XADD', p .. 'log:' .. project, 'MAXLEN', '~', maxlen, seq .. '-0', 'job', record)
  redis.call('ZADD', p .. 'projects', updated_at, project)
  return seq
end
"""

#: What every job write starts with: its arguments, and no write without an epoch (Redis came back empty).
_WRITE = (
    _APPEND
    + """
local p, project, agent, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local epoch = redis.call('HGET', p .. 'epoch', 'id')
if not epoch then return {'noepoch'} end
"""
)

# ARGV: prefix, project, agent, job_id, record, created_at, updated_at, maxlen, owner, lease_ms
_CREATE = (
    _WRITE
    + """
local active = redis.call('HGET', p .. 'active:' .. project, agent)
if active then
  local record = redis.call('HGET', p .. 'job:' .. active, 'record')
  if record then return {'dup', record} end
end
redis.call('HSET', p .. 'job:' .. id, 'status', QUEUED, 'record', ARGV[5])
redis.call('HSET', p .. 'active:' .. project, agent, id)
redis.call('SADD', p .. 'active', id)
redis.call('ZADD', p .. 'hist:' .. project, ARGV[6], id)
redis.call('ZADD', p .. 'hist:' .. project .. ':' .. agent, ARGV[6], id)
redis.call('SET', p .. 'lease:' .. id, ARGV[9], 'PX', ARGV[10])
return {'ok', append(p, project, ARGV[5], ARGV[7], ARGV[8]), epoch}
"""
)

# ARGV: prefix, project, agent, job_id, expected, status, record, updated_at, maxlen, final, result, cancel
_UPDATE = (
    _WRITE
    + """
local key = p .. 'job:' .. id
if redis.call('HGET', key, 'status') ~= ARGV[5] then return {'stale'} end
redis.call('HSET', key, 'status', ARGV[6], 'record', ARGV[7])
redis.call('HDEL', key, 'progress')
if ARGV[12] == '1' then redis.call('HSET', key, 'cancel', '1') end
if ARGV[10] == '1' then
  if redis.call('HGET', p .. 'active:' .. project, agent) == id then
    redis.call('HDEL', p .. 'active:' .. project, agent)
  end
  redis.call('SREM', p .. 'active', id)
  redis.call('DEL', p .. 'lease:' .. id)
end
if ARGV[11] ~= '' then redis.call('HSET', p .. 'results:' .. project, agent, ARGV[11]) end
return {'ok', append(p, project, ARGV[7], ARGV[8], ARGV[9]), epoch}
"""
)

# ARGV: prefix, job_id, progress
_SET_PROGRESS = """
local key = ARGV[1] .. 'job:' .. ARGV[2]
if redis.call('HGET', key, 'status') == RUNNING then redis.call('HSET', key, 'progress', ARGV[3]) end
"""

# ARGV: prefix, owner, lease_ms, job ids...; returns {lost ids, ids whose cancel was requested}
_RENEW = """
local p, owner, ms = ARGV[1], ARGV[2], ARGV[3]
local lost, cancel = {}, {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local status = redis.call('HGET', p .. 'job:' .. id, 'status')
  local holder = redis.call('GET', p .. 'lease:' .. id)
  if ACTIVE[status] and (holder == owner or not holder) then
    redis.call('SET', p .. 'lease:' .. id, owner, 'PX', ms)
    if redis.call('HGET', p .. 'job:' .. id, 'cancel') == '1' then cancel[#cancel + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
return {lost, cancel}
"""

# ARGV: prefix; returns the records of active jobs nobody holds a lease on
_ORPHANS = """
local p = ARGV[1]
local found = {}
for _, id in ipairs(redis.call('SMEMBERS', p .. 'active')) do
  if redis.call('EXISTS', p .. 'lease:' .. id) == 0 then
    local record = redis.call('HGET', p .. 'job:' .. id, 'record')
    if record then found[#found + 1] = record else redis.call('SREM', p .. 'active', id) end
  end
end
return found
"""

# ARGV: prefix, run_id, candidate epoch; keeps the epoch while the same Redis server runs
_ENSURE_EPOCH = """
local key = ARGV[1] .. 'epoch'
local id = redis.call('HGET', key, 'id')
if id and redis.call('HGET', key, 'run_id') == ARGV[2] then return id end
redis.call('HSET', key, 'id', ARGV[3], 'run_id', ARGV[2])
return ARGV[3]
"""

_JOB_FIELDS = """
local function job(p, id)
  if not id then return '' end
  local fields = redis.call('HMGET', p .. 'job:' .. id, 'record', 'progress')
  return {fields[1] or '', fields[2] or ''}
end
"""

# ARGV: prefix, project, agents...; one script, so nothing lands between the reads
_SNAPSHOT = (
    _JOB_FIELDS
    + """
local p, project = ARGV[1], ARGV[2]
local jobs = {}
for i = 3, #ARGV do
  local agent = ARGV[i]
  local id = redis.call('HGET', p .. 'active:' .. project, agent)
  if not id then id = redis.call('ZREVRANGE', p .. 'hist:' .. project .. ':' .. agent, 0, 0)[1] end
  jobs[#jobs + 1] = job(p, id)
end
return {
  redis.call('GET', p .. 'seq:' .. project) or '0',
  redis.call('HGET', p .. 'epoch', 'id') or '',
  jobs,
  redis.call('HGETALL', p .. 'results:' .. project),
}
"""
)


class _ShieldedPool(aioredis.BlockingConnectionPool):
    """A pool whose connections always come back: a deadline that cancels a command must not
    cancel the release too, or each such cancel would shrink the pool for good."""

    async def release(self, connection: Any) -> None:
        with anyio.CancelScope(shield=True):
            await super().release(connection)


class _ShieldedReaderPool(aioredis.ConnectionPool):
    """The same, for the blocking readers' pool."""

    async def release(self, connection: Any) -> None:
        with anyio.CancelScope(shield=True):
            await super().release(connection)


def split_url(url: str) -> tuple[str, str]:
    """The URL for redis-py and jobcast's key prefix (``?prefix=``, default ``jobcast:``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((value for key, value in query if key == "prefix"), "jobcast")
    rest = urlencode([(key, value) for key, value in query if key != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix.rstrip(":") + ":"


class RedisStore(Store):
    kind = "redis"
    shared = True

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url, self.prefix = split_url(url)
        self.location = redacted(self.url)
        self.epoch = ""
        #: names this process as a lease holder
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        options: dict[str, Any] = {
            "decode_responses": True,
            "protocol": 2,
            "socket_timeout": _SOCKET_TIMEOUT,
            "socket_connect_timeout": _CONNECT_TIMEOUT,
            # One retry on a fresh connection when a pooled one was reset (Redis restarted), none on a
            # timeout: that would double the wait on a frozen server. Callers answer 503 and back off.
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        }
        # Commands share a bounded pool and wait their turn for a connection, so a burst of
        # requests queues instead of failing. Blocking reads (one per project a channel
        # follows) hold their connection for up to a second, so they get a pool of their own.
        # Both typed Any: redis-py's return types cover both decode modes; these decode.
        commands = _ShieldedPool.from_url(
            self.url, max_connections=_COMMAND_CONNECTIONS, timeout=_SOCKET_TIMEOUT, **options
        )
        self.client: Any = aioredis.Redis.from_pool(commands)
        self.readers: Any = aioredis.Redis.from_pool(
            _ShieldedReaderPool.from_url(self.url, max_connections=_READER_CONNECTIONS, **options)
        )
        self._scripts = {
            name: self.client.register_script(_STATES + source)
            for name, source in {
                "create": _CREATE,
                "update": _UPDATE,
                "set_progress": _SET_PROGRESS,
                "renew": _RENEW,
                "orphans": _ORPHANS,
                "ensure_epoch": _ENSURE_EPOCH,
                "snapshot": _SNAPSHOT,
            }.items()
        }
        self._epoch_checked = False
        self._epoch_lock = anyio.Lock()
        self._unavailable = False
        #: the outage is Redis not answering at all (frozen, a black hole), not a quick refusal
        self._silent = False
        self._next_probe = 0.0

    # -- connection health ---------------------------------------------------------

    async def open(self) -> None:
        try:
            await self._call(self.client.ping)
        except StoreUnavailable:
            pass  # already logged; the server starts and answers 503 until Redis is back

    async def close(self) -> None:
        await self.client.aclose()
        await self.readers.aclose()

    async def _call(self, operation: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run one Redis operation within :data:`CALL_DEADLINE`; an outage becomes StoreUnavailable (503)."""
        return await self._call_within(CALL_DEADLINE, operation, *args, **kwargs)

    async def _call_within(
        self, deadline: float, operation: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
    ) -> T:
        self._fail_fast_while_down()
        try:
            # A cancelled command costs its connection (redis-py drops it), never a mixed-up reply.
            with anyio.fail_after(deadline):
                if not self._epoch_checked:
                    await self._refresh_epoch()
                result = await operation(*args, **kwargs)
        except (TimeoutError, *_UNAVAILABLE) as exc:
            self._went_away(exc)
            raise StoreUnavailable("the Redis store is unavailable; try again shortly") from None
        except ResponseError as exc:
            if not str(exc).startswith(_UNAVAILABLE_REPLIES):
                raise
            self._went_away(exc)
            raise StoreUnavailable("the Redis store is unavailable; try again shortly") from None
        if self._unavailable:
            self._unavailable = self._silent = False
            logger.warning("Redis at %s is reachable again", self.location)
        return result

    def _fail_fast_while_down(self) -> None:
        """While Redis does not answer, let one call through each PROBE_INTERVAL to find out when it is back.

        A Redis that refuses quickly (down, out of memory, read-only) is simply asked each time.
        """
        if not self._silent:
            return
        now = anyio.current_time()
        if now < self._next_probe:
            raise StoreUnavailable("the Redis store is unavailable; try again shortly", maybe_applied=False)
        self._next_probe = now + PROBE_INTERVAL

    def _went_away(self, exc: BaseException) -> None:
        # Redis may have restarted meanwhile, perhaps empty: check the epoch before trusting the log.
        self._epoch_checked = False
        self._silent = isinstance(exc, TimeoutError | RedisTimeoutError)
        self._next_probe = anyio.current_time() + PROBE_INTERVAL
        if not self._unavailable:
            self._unavailable = True
            reason = "no answer within its deadline" if isinstance(exc, TimeoutError) else str(exc) or type(exc)
            logger.warning("Redis at %s is unavailable (%s); answering 503 and reconnecting", self.location, reason)

    async def _refresh_epoch(self, force: bool = False) -> None:
        async with self._epoch_lock:
            if self._epoch_checked and not force:
                return
            info = await self.client.info("server")
            epoch = await self._scripts["ensure_epoch"](args=[self.prefix, info["run_id"], uuid.uuid4().hex[:12]])
            if self.epoch and epoch != self.epoch:
                logger.warning("Redis restarted: epoch %s replaces %s; clients get a fresh snapshot", epoch, self.epoch)
            self.epoch = epoch
            self._epoch_checked = True

    async def ping(self) -> None:
        await self._call(self.client.ping)

    async def check_epoch(self) -> str:
        # Checked by this caller alone: other calls go on meanwhile instead of queueing for the lock.
        await self._call(self._refresh_epoch, True)
        return self.epoch

    def _adopt_epoch(self, epoch: str) -> None:
        """A read saw the epoch; another process may have started a new one."""
        if not epoch:
            self._epoch_checked = False
        elif epoch != self.epoch:
            self.epoch = epoch

    async def _script(self, name: str, *args: Any) -> Any:
        """Run a write script; if Redis lost its epoch, establish a new one and try once more."""
        reply = await self._call(self._scripts[name], args=[self.prefix, *args])
        if reply[0] == "noepoch":
            self._epoch_checked = False
            reply = await self._call(self._scripts[name], args=[self.prefix, *args])
        return reply

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # -- writes --------------------------------------------------------------------------

    async def create_job(self, job: Job) -> tuple[Job, bool]:
        reply = await self._script(
            "create",
            job.project_id,
            job.agent,
            job.job_id,
            _record(job),
            job.created_at,
            job.updated_at,
            self.history,
            self.owner,
            int(self.lease_seconds * 1000),
        )
        if reply[0] == "dup":
            return _job(reply[1]), True
        self._adopt_epoch(reply[2])
        return job, False

    async def update_job(self, job: Job, expected: JobStatus) -> Event:
        result = ""
        if job.status is JobStatus.COMPLETED and job.result is not None:
            result = json.dumps({"job_id": job.job_id, "result": job.result, "at": job.updated_at})
        reply = await self._script(
            "update",
            job.project_id,
            job.agent,
            job.job_id,
            expected.value,
            job.status.value,
            _record(job),
            job.updated_at,
            self.history,
            "1" if job.status.is_final else "0",
            result,
            "1" if job.cancel_requested else "0",
        )
        if reply[0] == "stale":
            raise StaleJob(job.job_id, expected.value)
        self._adopt_epoch(reply[2])
        return Event(epoch=reply[2], seq=int(reply[1]), job=job)

    async def set_progress(self, job_id: str, progress: Progress) -> None:
        await self._call(self._scripts["set_progress"], args=[self.prefix, job_id, json.dumps(progress.to_dict())])

    async def publish_progress(self, update: ProgressUpdate) -> None:
        await self._call(
            self.client.xadd,
            self._key("progress", update.project_id),
            {"u": json.dumps(update.to_record())},
            maxlen=_PROGRESS_KEEP,
            approximate=True,
        )

    async def renew_leases(self, job_ids: Collection[str]) -> LeaseReport:
        if not job_ids:
            return LeaseReport()
        lost, cancel = await self._call(
            self._scripts["renew"], args=[self.prefix, self.owner, int(self.lease_seconds * 1000), *job_ids]
        )
        return LeaseReport(lost=set(lost), cancel_requested=set(cancel))

    async def orphaned_jobs(self) -> list[Job]:
        records = await self._call(self._scripts["orphans"], args=[self.prefix])
        return [_job(record) for record in records]

    # -- reads ------------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job | None:
        record, progress = await self._call(self.client.hmget, self._key("job", job_id), ["record", "progress"])
        return None if record is None else _job(record, progress)

    async def _jobs(self, ids: Sequence[str]) -> list[Job]:
        async def fetch() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hmget(self._key("job", job_id), ["record", "progress"])
                return list(await pipe.execute())

        rows = await self._call(fetch) if ids else []
        return [_job(record, progress) for record, progress in rows if record is not None]

    async def latest_job(self, project_id: str, agent: str) -> Job | None:
        job_id = await self._call(self.client.hget, self._key("active", project_id), agent)
        if job_id is None:
            newest = await self._call(self.client.zrevrange, self._key("hist", project_id, agent), 0, 0)
            job_id = newest[0] if newest else None
        return None if job_id is None else await self.get_job(job_id)

    async def list_jobs(self, project_id: str, agent: str | None, limit: int) -> list[Job]:
        key = self._key("hist", project_id) if agent is None else self._key("hist", project_id, agent)
        return await self._jobs(await self._call(self.client.zrevrange, key, 0, limit - 1))

    async def last_results(self, project_id: str) -> dict[str, LastResult]:
        rows = await self._call(self.client.hgetall, self._key("results", project_id))
        return _results(rows)

    async def snapshot(self, project_id: str, agents: Sequence[str]) -> ProjectState:
        seq, epoch, jobs, results = await self._call(self._scripts["snapshot"], args=[self.prefix, project_id, *agents])
        self._adopt_epoch(epoch)
        found = zip(agents, jobs, strict=True)
        return ProjectState(
            seq=int(seq),
            jobs={agent: _job(*fields) if fields and fields[0] else None for agent, fields in found},
            results=_results(dict(zip(results[::2], results[1::2], strict=True))),
        )

    async def active_jobs(self) -> list[Job]:
        return await self._jobs(sorted(await self._call(self.client.smembers, self._key("active"))))

    async def project_ids(self) -> list[str]:
        return list(await self._call(self.client.zrevrange, self._key("projects"), 0, -1))

    async def last_seq(self, project_id: str) -> int:
        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.get(self._key("seq", project_id)).hget(self._key("epoch"), "id")
                return list(await pipe.execute())

        seq, epoch = await self._call(read)
        self._adopt_epoch(epoch or "")
        return int(seq or 0)

    async def events_after(self, project_id: str, after: int, limit: int) -> list[Event]:
        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xrange(self._key("log", project_id), f"{after + 1}-0", "+", count=limit)
                pipe.hget(self._key("epoch"), "id")
                return list(await pipe.execute())

        entries, epoch = await self._call(read)
        self._adopt_epoch(epoch or "")
        return [self._event(entry_id, fields) for entry_id, fields in entries]

    def _event(self, entry_id: str, fields: dict[str, str]) -> Event:
        return Event(epoch=self.epoch, seq=int(entry_id.partition("-")[0]), job=_job(fields["job"]))

    async def wait_for_events(self, project_id: str, after: int, timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            while await self.last_seq(project_id) <= after:
                await self._call_within(
                    _READ_DEADLINE,
                    self.readers.xread,
                    {self._key("log", project_id): f"{after}-0"},
                    count=1,
                    block=_BLOCK_MS,
                )
            return True
        return False

    def follower(self, project_id: str) -> Follower:
        return _RedisFollower(self, project_id)


class _RedisFollower(Follower):
    """One blocking XREAD on the project's log and progress streams: one reader per channel."""

    def __init__(self, store: RedisStore, project_id: str) -> None:
        super().__init__(store, project_id)
        self.redis = store
        self.log_key = store._key("log", project_id)
        self.progress_key = store._key("progress", project_id)
        self.progress_id: str | None = None
        self.epoch = store.epoch

    async def next(self, after: int, limit: int) -> tuple[list[Event], list[ProgressUpdate]]:
        store = self.redis
        if self.progress_id is None:
            newest = await store._call(store.client.xrevrange, self.progress_key, count=1)
            self.progress_id = newest[0][0] if newest else "0-0"
        while store.epoch == self.epoch:  # a new epoch ends the channel; its caller sees store.epoch
            replies = await store._call_within(
                _READ_DEADLINE,
                store.readers.xread,
                {self.log_key: f"{after}-0", self.progress_key: self.progress_id},
                count=limit,
                block=_BLOCK_MS,
            )
            events: list[Event] = []
            progress: list[ProgressUpdate] = []
            for key, entries in replies or ():
                if key == self.log_key:
                    events = [store._event(entry_id, fields) for entry_id, fields in entries]
                else:
                    self.progress_id = entries[-1][0]
                    progress = [ProgressUpdate.from_record(json.loads(fields["u"])) for _, fields in entries]
            if events or progress:
                return events, progress
        return [], []


def _record(job: Job) -> str:
    return json.dumps(job.to_record())


def _job(record: str, progress: str | None = None) -> Job:
    job = Job.from_record(json.loads(record))
    if progress and job.status is JobStatus.RUNNING:
        job = job.with_progress(Progress(**json.loads(progress)))
    return job


def _results(rows: dict[str, str]) -> dict[str, LastResult]:
    results = {}
    for agent, body in rows.items():
        value = json.loads(body)
        results[agent] = LastResult(job_id=value["job_id"], result=value["result"], at=value["at"])
    return results
