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
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, OutOfMemoryError, ReadOnlyError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import QueueFull, StaleJob, StoreUnavailable
from ..jobs import (
    ACTIVE_STATES,
    Event,
    Job,
    JobStatus,
    LastResult,
    OutputChunk,
    Progress,
    ProgressUpdate,
    ProjectState,
)
from ..scheduling import Caps, IfActive, Queued, QueueState, RunningJob, decide_start
from .base import Follower, JobQuery, LeaseReport, Store, redacted

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Progress entries kept per project: only the newest matter, readers are never far behind.
_PROGRESS_KEEP = 64
#: Output entries kept per project: readers are never far behind, and one that is fills the gap from the store.
_OUTPUT_KEEP = 4096
#: A refresh that raced another one for the same (project, agent) reads and decides again this many times,
#: after a short random pause that grows with each lost race, so a burst of racing refreshes spreads out.
_START_TRIES = 64
_START_PAUSE = 0.002
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
    f"local WAITING = {{['{JobStatus.QUEUED.value}'] = true, ['{JobStatus.RETRYING.value}'] = true}}\n"
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

_SCHED = """
local function queue_changed(p)
  redis.call('XADD', p .. 'sched', 'MAXLEN', '~', 256, '*', 'k', '1')
end
"""

#: What ends a job's part in the queue: out of ``queued``, out of ``running`` (and its counts), and,
#: once final, its (project, agent)'s follow-up becomes the head.
_LEAVE = """
local function leave(p, project, agent, id, from, to, meta)
  if from == to then return end
  if WAITING[from] then redis.call('HDEL', p .. 'queued', id) end
  if WAITING[to] and meta and meta ~= '' then redis.call('HSET', p .. 'queued', id, meta) end
  if from == RUNNING then
    if redis.call('HDEL', p .. 'running', id) == 1 then
      local user = redis.call('HGET', p .. 'job:' .. id, 'user') or ''
      redis.call('HINCRBY', p .. 'counts', 'p:' .. project, -1)
      redis.call('HINCRBY', p .. 'counts', 'a:' .. agent, -1)
      redis.call('HINCRBY', p .. 'counts', 'u:' .. user, -1)
    end
  end
  if not ACTIVE[to] then
    local heads, nexts = p .. 'active:' .. project, p .. 'next:' .. project
    if redis.call('HGET', heads, agent) == id then
      local follow = redis.call('HGET', nexts, agent)
      if follow then
        redis.call('HSET', heads, agent, follow)
        redis.call('HDEL', nexts, agent)
      else
        redis.call('HDEL', heads, agent)
      end
    elseif redis.call('HGET', nexts, agent) == id then
      redis.call('HDEL', nexts, agent)
    end
    redis.call('SREM', p .. 'active', id)
    redis.call('DEL', p .. 'lease:' .. id)
  end
  queue_changed(p)
end
"""

# ARGV: prefix, project, agent, '', plan (JSON: seen, max_queued, cancel, stop, insert), maxlen
#: The refresh a process decided (server/scheduling.py decide_start) from the active jobs it read:
#: written only if they are still exactly as it saw them; otherwise it reads and decides again.
_START = (
    _WRITE
    + _SCHED
    + _LEAVE
    + """
local plan = cjson.decode(ARGV[5])
local heads, nexts = p .. 'active:' .. project, p .. 'next:' .. project
local seen = {redis.call('HGET', heads, agent) or '', redis.call('HGET', nexts, agent) or ''}
for i = 1, 2 do
  local want = plan.seen[i]
  if seen[i] ~= want[1] then return {'retry'} end
  if want[1] ~= '' then
    local fields = redis.call('HMGET', p .. 'job:' .. want[1], 'status', 'cancel')
    if fields[1] ~= want[2] or (fields[2] or '0') ~= want[3] then return {'retry'} end
  end
end
if plan.max_queued > 0 and redis.call('HLEN', p .. 'queued') - #plan.cancel >= plan.max_queued then
  return {'full'}
end
local seq = 0
for _, job in ipairs(plan.cancel) do
  redis.call('HSET', p .. 'job:' .. job.id, 'status', job.status, 'record', job.record)
  leave(p, project, agent, job.id, job.from, job.status)
  seq = append(p, project, job.record, job.updated_at, ARGV[6])
end
if plan.stop ~= cjson.null then
  redis.call('HSET', p .. 'job:' .. plan.stop.id, 'record', plan.stop.record, 'cancel', '1')
  redis.call('XADD', p .. 'sched', 'MAXLEN', '~', 256, '*', 'cancel', plan.stop.id)
  seq = append(p, project, plan.stop.record, plan.stop.updated_at, ARGV[6])
end
local new = plan.insert
redis.call('HSET', p .. 'job:' .. new.id, 'status', QUEUED, 'record', new.record, 'user', new.user)
redis.call('HSET', p .. 'queued', new.id, new.meta)
redis.call('SADD', p .. 'active', new.id)
redis.call('ZADD', p .. 'hist', new.created_at, new.id)
redis.call('ZADD', p .. 'hist:' .. project, new.created_at, new.id)
redis.call('ZADD', p .. 'hist:' .. project .. ':' .. agent, new.created_at, new.id)
if redis.call('HEXISTS', heads, agent) == 1 then
  redis.call('HSET', nexts, agent, new.id)
else
  redis.call('HSET', heads, agent, new.id)
end
seq = append(p, project, new.record, new.updated_at, ARGV[6])
queue_changed(p)
return {'ok', seq, epoch}
"""
)

# ARGV: prefix, project, agent, job_id, record, updated_at, maxlen, owner, lease_ms,
#       per_project, per_agent, per_user, after, running meta, expected status (queued or retrying)
#: Start a waiting job, if it still waits and no limit holds it back: the check and the start are one step.
_CLAIM = (
    _WRITE
    + _SCHED
    + """
local key = p .. 'job:' .. id
if redis.call('HGET', key, 'status') ~= ARGV[15] then return {'stale'} end
if ARGV[13] ~= '' and ACTIVE[redis.call('HGET', p .. 'job:' .. ARGV[13], 'status')] then return {'held'} end
local user = redis.call('HGET', key, 'user') or ''
local counted = {{'p:' .. project, ARGV[10]}, {'a:' .. agent, ARGV[11]}, {'u:' .. user, ARGV[12]}}
for _, pair in ipairs(counted) do
  local cap = tonumber(pair[2])
  if cap > 0 and tonumber(redis.call('HGET', p .. 'counts', pair[1]) or '0') >= cap then return {'held'} end
end
for _, pair in ipairs(counted) do redis.call('HINCRBY', p .. 'counts', pair[1], 1) end
redis.call('HSET', key, 'status', RUNNING, 'record', ARGV[5])
redis.call('HDEL', p .. 'queued', id)
redis.call('HSET', p .. 'running', id, ARGV[14])
redis.call('HSET', p .. 'last_start', user, ARGV[6])
redis.call('SET', p .. 'lease:' .. id, ARGV[8], 'PX', ARGV[9])
queue_changed(p)
return {'ok', append(p, project, ARGV[5], ARGV[6], ARGV[7]), epoch}
"""
)

# ARGV: prefix, project, agent, job_id, expected, status, record, updated_at, maxlen, final, result, cancel,
#       queue meta (a job going back to wait: retrying, or requeued), duration (a job that completed)
_UPDATE = (
    _WRITE
    + _SCHED
    + _LEAVE
    + """
local key = p .. 'job:' .. id
if redis.call('HGET', key, 'status') ~= ARGV[5] then return {'stale'} end
redis.call('HSET', key, 'status', ARGV[6], 'record', ARGV[7])
redis.call('HDEL', key, 'progress')
if ARGV[12] == '1' and redis.call('HGET', key, 'cancel') ~= '1' then
  redis.call('HSET', key, 'cancel', '1')
  if ARGV[6] == RUNNING then
    -- the process running it hears at once, not at its next lease round
    redis.call('XADD', p .. 'sched', 'MAXLEN', '~', 256, '*', 'cancel', id)
  end
end
leave(p, project, agent, id, ARGV[5], ARGV[6], ARGV[13])
if ARGV[14] ~= '' then
  for _, key in ipairs({p .. 'durations:' .. agent, p .. 'durations:' .. agent .. ':' .. project}) do
    redis.call('LPUSH', key, ARGV[14])
    redis.call('LTRIM', key, 0, 19)
  end
end
if ARGV[11] ~= '' then redis.call('HSET', p .. 'results:' .. project, agent, ARGV[11]) end
if ARGV[10] == '1' then redis.call('DEL', p .. 'output:' .. id, p .. 'outmeta:' .. id) end
return {'ok', append(p, project, ARGV[7], ARGV[8], ARGV[9]), epoch}
"""
)

# ARGV: prefix, job_id, attempt, offset, text, its length in characters
#: A running job's output: the text in a string (APPEND), its attempt and length in characters beside it.
_APPEND_OUTPUT = """
local text, meta = ARGV[1] .. 'output:' .. ARGV[2], ARGV[1] .. 'outmeta:' .. ARGV[2]
local fields = redis.call('HMGET', meta, 'attempt', 'length')
if fields[1] ~= ARGV[3] then
  if ARGV[4] ~= '0' then return 0 end
  redis.call('DEL', text)
  fields[2] = '0'
end
if fields[2] ~= ARGV[4] then return 0 end
redis.call('APPEND', text, ARGV[5])
redis.call('HSET', meta, 'attempt', ARGV[3], 'length', tonumber(ARGV[4]) + tonumber(ARGV[6]))
return 1
"""

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

# ARGV: prefix; returns the records of running jobs nobody holds a lease on (queued ones wait for any process)
_ORPHANS = """
local p = ARGV[1]
local found = {}
for _, id in ipairs(redis.call('SMEMBERS', p .. 'active')) do
  local fields = redis.call('HMGET', p .. 'job:' .. id, 'status', 'record')
  if not fields[2] then
    redis.call('SREM', p .. 'active', id)
  elseif fields[1] == RUNNING and redis.call('EXISTS', p .. 'lease:' .. id) == 0 then
    found[#found + 1] = fields[2]
  end
end
return found
"""

# ARGV: prefix, run_id, candidate epoch; keeps the epoch while the same Redis server runs
#: a token bucket every process shares: ``capacity`` starts, refilled at ``rate`` a second, on Redis's clock
_TAKE_START = """
local key, capacity, rate = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local held = redis.call('HMGET', key, 'tokens', 'updated')
local tokens = tonumber(held[1]) or capacity
local updated = tonumber(held[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - updated) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', key, 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('EXPIRE', key, math.ceil(capacity / rate) + 60)
return tostring(wait)
"""

#: the streams one client address holds in the other live processes, as each last published them
_CONNECTIONS_ELSEWHERE = """
local p, address, me, oldest = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local total = 0
for _, process in ipairs(redis.call('ZRANGEBYSCORE', p .. 'conns', oldest, '+inf')) do
  if process ~= me then total = total + (tonumber(redis.call('HGET', p .. 'conns:' .. process, address)) or 0) end
end
return total
"""

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
  local id = redis.call('HGET', p .. 'next:' .. project, agent) or redis.call('HGET', p .. 'active:' .. project, agent)
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
                "start": _START,
                "claim": _CLAIM,
                "update": _UPDATE,
                "set_progress": _SET_PROGRESS,
                "append_output": _APPEND_OUTPUT,
                "renew": _RENEW,
                "orphans": _ORPHANS,
                "ensure_epoch": _ENSURE_EPOCH,
                "take_start": _TAKE_START,
                "connections_elsewhere": _CONNECTIONS_ELSEWHERE,
                "snapshot": _SNAPSHOT,
            }.items()
        }
        self._epoch_checked = False
        #: the last entry this process read of the stream that says the queue changed
        self._sched_id: str | None = None
        self._epoch_lock = anyio.Lock()
        self._unavailable = False
        #: the outage is Redis not answering at all (frozen, a black hole), not a quick refusal
        self._silent = False
        self._next_probe = 0.0

    # -- connection health ---------------------------------------------------------

    async def open(self) -> None:
        try:
            await self._call(self.client.ping)
            await self._call(self._index_waiting_jobs)
            await self._call(self._index_history)
        except StoreUnavailable:
            pass  # already logged; the server starts and answers 503 until Redis is back

    async def _index_history(self) -> None:
        """Jobs an older jobcast left (it kept history per project only) join the index across projects."""
        if await self.client.exists(self._key("hist")):
            return
        projects = await self.client.zrange(self._key("projects"), 0, -1)
        if projects:
            await self.client.zunionstore(self._key("hist"), [self._key("hist", project) for project in projects])

    async def _index_waiting_jobs(self) -> None:
        """Queued jobs an older jobcast left (it kept no queue index) join the queue, so they run rather than
        wait forever. Any process may do it at start, any number of times: HSETNX changes nothing twice."""
        ids = list(await self.client.smembers(self._key("active")))
        if not ids:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(self._key("job", job_id), ["status", "record"])
            rows = await pipe.execute()
        waiting = [Job.from_record(json.loads(record)) for status, record in rows if status in WAITING and record]
        if waiting:
            async with self.client.pipeline(transaction=False) as pipe:
                for job in waiting:
                    pipe.hsetnx(self._key("queued"), job.job_id, json.dumps(Queued.of(job).to_record()))
                    pipe.hsetnx(self._key("job", job.job_id), "user", job.requester)
                await pipe.execute()

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
            self.outage.recovered()
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
            self.outage.failed()
            raise StoreUnavailable("the Redis store is unavailable; try again shortly", maybe_applied=False)
        self._next_probe = now + PROBE_INTERVAL

    def _went_away(self, exc: BaseException) -> None:
        # Redis may have restarted meanwhile, perhaps empty: check the epoch before trusting the log.
        self._epoch_checked = False
        self.outage.failed()
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

    async def create_job(
        self, job: Job, if_active: IfActive = IfActive.ATTACH, max_queued: int = 0
    ) -> tuple[Job, bool]:
        """Read the agent's active jobs, decide as every store does, and write only if nothing changed meanwhile."""
        for attempt in range(_START_TRIES):
            if attempt:
                await anyio.sleep(random.uniform(0, _START_PAUSE * min(attempt, 10)))
            # The first try guesses the common case, nothing active, so a fresh start is one round trip.
            active = await self._active_of(job.project_id, job.agent) if attempt else []
            decision = decide_start(active, job, if_active)
            if decision.insert is None:
                return decision.job, True
            reply = await self._script(
                "start", job.project_id, job.agent, "", _plan(active, decision, max_queued), self.history
            )
            if reply[0] == "full":
                raise QueueFull(max_queued)
            if reply[0] == "ok":
                self._adopt_epoch(reply[2])
                return decision.job, False
        raise StoreUnavailable("too many refreshes of this agent at once; try again", maybe_applied=False)

    async def _active_of(self, project_id: str, agent: str) -> list[Job]:
        """The (project, agent)'s head and follow-up, with ``cancel_requested`` as the store holds it."""

        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hget(self._key("active", project_id), agent).hget(self._key("next", project_id), agent)
                return list(await pipe.execute())

        ids = [job_id for job_id in await self._call(read) if job_id]
        return await self._jobs(ids)

    async def queue_state(self) -> QueueState:
        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hvals(self._key("queued")).hvals(self._key("running")).hgetall(self._key("last_start"))
                return list(await pipe.execute())

        queued, running, last_started = await self._call(read)
        return QueueState(
            [Queued.from_record(json.loads(meta)) for meta in queued],
            [RunningJob.from_record(json.loads(meta)) for meta in running],
            {user: float(at) for user, at in last_started.items()},
        )

    async def start_queued(self, running: Job, caps: Caps, expected: JobStatus = JobStatus.QUEUED) -> Event | None:
        reply = await self._script(
            "claim",
            running.project_id,
            running.agent,
            running.job_id,
            _record(running),
            running.updated_at,
            self.history,
            self.owner,
            int(self.lease_seconds * 1000),
            caps.per_project,
            caps.per_agent.get(running.agent, 0),
            caps.per_user,
            running.after or "",
            json.dumps(RunningJob.of(running).to_record()),
            expected.value,
        )
        if reply[0] == "stale":
            raise StaleJob(running.job_id, expected.value)
        if reply[0] == "held":
            return None
        self._adopt_epoch(reply[2])
        return Event(epoch=reply[2], seq=int(reply[1]), job=running)

    async def wait_for_queue_change(self, timeout: float) -> set[str]:
        """One blocking read of the stream every process appends to when the queue changes, or a running
        job's cancel is requested; returns those jobs' ids."""
        with anyio.move_on_after(timeout):
            if self._sched_id is None:
                newest = await self._call(self.client.xrevrange, self._key("sched"), count=1)
                self._sched_id = newest[0][0] if newest else "0-0"
            while True:
                replies = await self._call_within(
                    _READ_DEADLINE,
                    self.readers.xread,
                    {self._key("sched"): self._sched_id},
                    count=1000,
                    block=_BLOCK_MS,
                )
                for _, entries in replies or ():
                    if entries:
                        self._sched_id = entries[-1][0]
                        return {fields["cancel"] for _, fields in entries if "cancel" in fields}
        return set()

    async def update_job(self, job: Job, expected: JobStatus) -> Event:
        if expected in (JobStatus.QUEUED, JobStatus.RETRYING) and job.status is JobStatus.RUNNING:
            started = await self.start_queued(job, Caps(), expected)  # a start takes the lease, counts as running
            if started is None:
                raise StaleJob(job.job_id, expected.value)
            return started
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
            json.dumps(Queued.of(job).to_record()) if job.status in WAITING_STATES else "",
            _duration(job),
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

    async def append_output(self, chunk: OutputChunk) -> None:
        args = [self.prefix, chunk.job_id, chunk.attempt, chunk.offset, chunk.text, len(chunk.text)]
        await self._call(self._scripts["append_output"], args=args)

    async def get_output(self, job_id: str) -> tuple[int, str] | None:
        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hget(self._key("outmeta", job_id), "attempt").get(self._key("output", job_id))
                return list(await pipe.execute())

        attempt, text = await self._call(read)
        return None if attempt is None else (int(attempt), text or "")

    async def publish_output(self, chunk: OutputChunk) -> None:
        await self._call(
            self.client.xadd,
            self._key("outstream", chunk.project_id),
            {"o": json.dumps(chunk.to_record())},
            maxlen=_OUTPUT_KEEP,
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
        active = await self._active_of(project_id, agent)
        if active:
            return active[-1]
        newest = await self._call(self.client.zrevrange, self._key("hist", project_id, agent), 0, 0)
        return await self.get_job(newest[0]) if newest else None

    async def durations(self, agent: str, project_id: str | None, limit: int) -> list[float]:
        key = self._key("durations", agent) if project_id is None else self._key("durations", agent, project_id)
        return [float(value) for value in await self._call(self.client.lrange, key, 0, limit - 1)]

    async def list_jobs(self, project_id: str, agent: str | None, limit: int) -> list[Job]:
        key = self._key("hist", project_id) if agent is None else self._key("hist", project_id, agent)
        return await self._jobs(await self._call(self.client.zrevrange, key, 0, limit - 1))

    async def find_jobs(self, query: JobQuery) -> list[Job]:
        """Walks the history index newest first, a batch at a time, keeping the jobs that match."""
        key = self._key("hist")
        if query.projects is not None and len(query.projects) == 1:
            key = self._key("hist", *query.projects, *([query.agent] if query.agent else []))
        newest = "+inf" if query.before is None else repr(query.before[0])
        batch = max(100, query.limit * 2)
        found: list[Job] = []
        offset = 0
        while len(found) < query.limit:
            ids = await self._call(self.client.zrevrangebyscore, key, newest, "-inf", start=offset, num=batch)
            found.extend(filter(query.matches, await self._jobs(ids)))
            if len(ids) < batch:
                break
            offset += batch
        return query.page(found)

    async def take_start(self, key: str, per_minute: int) -> float | None:
        script = self._scripts["take_start"]
        return float(await self._call(script, args=[self._key("starts", key), per_minute, per_minute / 60]))

    async def connections_elsewhere(self, address: str, process: str, max_age: float) -> int:
        script = self._scripts["connections_elsewhere"]
        return int(await self._call(script, args=[self.prefix, address, process, time.time() - max_age]))

    async def publish_connections(self, process: str, counts: Mapping[str, int], max_age: float) -> None:
        await self._publish_table("conns", process, counts, max_age)

    async def _publish_table(self, name: str, process: str, counts: Mapping[str, int], max_age: float) -> None:
        """This process's table (streams per address, watchers per project) replaces its last one at once
        (MULTI), and expires unless published again; the processes that published lately are in a sorted set."""
        key, now = self._key(name, process), time.time()

        async def publish() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                if counts:
                    pipe.hset(key, mapping=dict(counts))
                pipe.expire(key, math.ceil(max_age))
                pipe.zadd(self._key(name), {process: now})
                pipe.zremrangebyscore(self._key(name), "-inf", now - max_age)
                await pipe.execute()

        await self._call(publish)

    async def publish_presence(self, process: str, counts: Mapping[str, int], max_age: float) -> None:
        await self._publish_table("presence", process, counts, max_age)

    async def presence_elsewhere(self, project_ids: Sequence[str], process: str, max_age: float) -> dict[str, int]:
        async def read() -> dict[str, int]:
            live = await self.client.zrangebyscore(self._key("presence"), time.time() - max_age, "+inf")
            others = [name for name in live if name != process]
            totals = dict.fromkeys(project_ids, 0)
            if not others:
                return totals
            async with self.client.pipeline(transaction=False) as pipe:
                for name in others:
                    pipe.hmget(self._key("presence", name), list(project_ids))
                for counts in await pipe.execute():
                    for project_id, count in zip(project_ids, counts, strict=True):
                        totals[project_id] += int(count or 0)
            return totals

        return await self._call(read)

    async def share_counts(self, process: str, counts: str, max_age: float) -> list[str]:
        """Each process's metrics are a field of one hash, stamped; stale ones are dropped as they are read."""
        key, now = self._key("metrics"), time.time()

        async def exchange() -> dict[str, str]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hset(key, process, json.dumps({"at": now, "counts": counts}))
                pipe.hgetall(key)
                return dict((await pipe.execute())[1])

        published = await self._call(exchange)
        live, stale = [], []
        for name, text in published.items():
            entry = json.loads(text)
            if now - entry["at"] <= max_age:
                live.append(entry["counts"])
            else:
                stale.append(name)  # a process gone for good: its numbers no longer count
        if stale:
            await self._call(self.client.hdel, key, *stale)
        return live

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
    """One blocking XREAD on the project's log, progress and output streams: one reader per channel."""

    def __init__(self, store: RedisStore, project_id: str) -> None:
        super().__init__(store, project_id)
        self.redis = store
        self.log_key = store._key("log", project_id)
        self.progress_key = store._key("progress", project_id)
        self.output_key = store._key("outstream", project_id)
        self.progress_id: str | None = None
        self.output_id: str | None = None
        self.epoch = store.epoch

    async def start(self) -> None:
        """From now on: output appended after this is read live; what came before, a subscriber reads whole."""
        store = self.redis
        for key in (self.progress_key, self.output_key):
            newest = await store._call(store.client.xrevrange, key, count=1)
            position = newest[0][0] if newest else "0-0"
            if key == self.progress_key:
                self.progress_id = position
            else:
                self.output_id = position

    async def next(self, after: int, limit: int) -> tuple[list[Event], list[ProgressUpdate], list[OutputChunk]]:
        store = self.redis
        if self.progress_id is None or self.output_id is None:
            await self.start()
        assert self.progress_id is not None and self.output_id is not None
        while store.epoch == self.epoch:  # a new epoch ends the channel; its caller sees store.epoch
            replies = await store._call_within(
                _READ_DEADLINE,
                store.readers.xread,
                {self.log_key: f"{after}-0", self.progress_key: self.progress_id, self.output_key: self.output_id},
                count=limit,
                block=_BLOCK_MS,
            )
            events: list[Event] = []
            progress: list[ProgressUpdate] = []
            output: list[OutputChunk] = []
            for key, entries in replies or ():
                if key == self.log_key:
                    events = [store._event(entry_id, fields) for entry_id, fields in entries]
                elif key == self.progress_key:
                    self.progress_id = entries[-1][0]
                    progress = [ProgressUpdate.from_record(json.loads(fields["u"])) for _, fields in entries]
                else:
                    self.output_id = entries[-1][0]
                    output = [OutputChunk.from_record(json.loads(fields["o"])) for _, fields in entries]
            if events or progress or output:
                return events, progress, output
        return [], [], []


def _record(job: Job) -> str:
    return json.dumps(job.to_record())


def _plan(active: Sequence[Job], decision: Any, max_queued: int) -> str:
    """The start script's argument: what the process saw of the active jobs, and what it decided."""
    seen = [[job.job_id, job.status.value, "1" if job.cancel_requested else "0"] for job in active]
    seen += [["", "", "0"]] * (2 - len(seen))
    was = {job.job_id: job.status.value for job in active}
    insert = decision.insert
    return json.dumps(
        {
            "seen": seen,
            "max_queued": max_queued,
            "cancel": [{**_written(job), "from": was[job.job_id]} for job in decision.cancel],
            "stop": None if decision.stop is None else _written(decision.stop),
            "insert": {
                **_written(insert),
                "user": insert.requester,
                "meta": json.dumps(Queued.of(insert).to_record()),
                "created_at": insert.created_at,
            },
        }
    )


WAITING_STATES = (JobStatus.QUEUED, JobStatus.RETRYING)
WAITING = {status.value for status in WAITING_STATES}


def _duration(job: Job) -> str:
    """A completed job's last attempt, in seconds, for the agent's history (ETA); '' otherwise."""
    if job.status is not JobStatus.COMPLETED or job.started_at is None or job.finished_at is None:
        return ""
    return repr(round(job.finished_at - job.started_at, 3))


def _written(job: Job) -> dict[str, Any]:
    return {"id": job.job_id, "status": job.status.value, "record": _record(job), "updated_at": job.updated_at}


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
