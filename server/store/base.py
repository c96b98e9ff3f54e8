"""The store interface: jobs, last results and the per-project event log.

Every change to a job record goes through :meth:`Store.create_job` or
:meth:`Store.update_job`, which write the record and append its event in one
atomic step. ``update_job`` is a compare-and-set on the status the caller read, so
two writers can never both finish a job.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import math
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence

import anyio

from ..errors import StaleJob
from ..jobs import Event, Job, JobStatus, LastResult, OutputChunk, Progress, ProgressUpdate, ProjectState
from ..scheduling import Caps, IfActive, QueueState, next_retry_at, over_limit, startable

#: A claim that loses a race (another process took the job, or a limit filled) looks again this many times.
_CLAIM_TRIES = 5


class Store(abc.ABC):
    #: identifies the sequence space of seqs; a cursor from another epoch cannot resume
    epoch: str
    #: the URL scheme, for /healthz and logs
    kind: str
    #: other processes use this store too: jobs carry leases and progress travels through it
    shared = False
    #: how long a job's lease lasts unless its process renews it (shared stores); from Settings
    lease_seconds: float
    #: how many events per project a store must keep for resumes (at least); from Settings
    history: int

    def __init__(self) -> None:
        self._feed = ChangeFeed()
        self._queue_change = anyio.Event()
        self._claiming = anyio.Lock()
        #: when the earliest retrying job may start, as the last look at the queue saw it
        self.next_retry_at: float | None = None
        #: failed calls and time unavailable, for /metrics
        self.outage = Outage()

    def claim(self, serving: str | None = None) -> None:
        """Take the store for this process before it serves (``jobcast serve`` calls it first).

        An embedded store refuses a second process here, before anything is written;
        ``serving`` (the address) is what that process is told about the owner.
        Raises :class:`~server.errors.ConfigError`. Shared stores need no claim.
        """

    async def open(self) -> None:
        """Connect and prepare; called once by the app's lifespan."""

    async def close(self) -> None:
        """Release connections; called once at shutdown."""

    async def ping(self) -> None:
        """Raise :class:`~server.errors.StoreUnavailable` unless the store answers a read now (``/readyz``)."""
        await self.last_seq("")

    @abc.abstractmethod
    async def create_job(
        self, job: Job, if_active: IfActive = IfActive.ATTACH, max_queued: int = 0
    ) -> tuple[Job, bool]:
        """Queue ``job``, or not, as :func:`~server.scheduling.decide_start` rules for ``if_active``.

        Returns ``(job, False)`` when inserted (its event appended, and those of any job it
        replaced), or ``(active_job, True)`` when it attached to one already queued or running.
        Raises :class:`~server.errors.QueueFull` when it would insert and ``max_queued``
        (0: no bound) jobs are queued already, across every process sharing the store.
        """

    @abc.abstractmethod
    async def queue_state(self) -> QueueState:
        """Every queued and running job, as the scheduler sees them."""

    async def start_queued(self, running: Job, caps: Caps, expected: JobStatus = JobStatus.QUEUED) -> Event | None:
        """Start a waiting job: its ``running`` record, written only if it is still ``expected`` (queued or
        retrying) and no limit holds it back now. None when a limit does; :class:`~server.errors.StaleJob`
        when it no longer waits.

        This default serves stores only one process writes, whose engine claims one job at a time.
        """
        async with self._claiming:
            state = await self.queue_state()
            waiting = next((job for job in state.queued if job.job_id == running.job_id), None)
            if waiting is None:
                raise StaleJob(running.job_id, expected.value)
            if over_limit(waiting, state, caps) is not None:
                return None
            return await self.update_job(running, expected)

    async def start_next(
        self,
        caps: Caps,
        runner: Mapping[str, object],
        runnable: Collection[str] | None = None,
        prepare: Callable[[Job], Awaitable[Job]] | None = None,
    ) -> Event | None:
        """Start the job a free thread should take (:func:`~server.scheduling.next_startable`), if any.

        Losing it to another process, it tries the next startable ones before it reads the queue again.
        ``prepare`` adds to the running record before it is written (the engine's estimate).
        """
        for _ in range(_CLAIM_TRIES):
            state = await self.queue_state()
            self.next_retry_at = next_retry_at(state)
            candidates = list(itertools.islice(startable(state, caps, runnable), _CLAIM_TRIES))
            if not candidates:
                return None
            for candidate in candidates:
                job = await self.get_job(candidate.job_id)
                if job is None or job.status not in (JobStatus.QUEUED, JobStatus.RETRYING):
                    continue
                if prepare is not None:
                    job = await prepare(job)
                running = job.started_on(runner)  # stamped last: started_at is as close to the start as it can be
                try:
                    event = await self.start_queued(running, caps, job.status)
                except StaleJob:
                    continue  # another process took it first
                if event is not None:
                    return event
                break  # a limit filled meanwhile: what is startable has changed
        return None

    async def wait_for_queue_change(self, timeout: float) -> set[str]:
        """Return when a job was queued, started or ended (in any process sharing the store), or after ``timeout``.

        A shared store also returns the running jobs whose cancel was just requested through
        another process, so the one running them stops them at once (here, the engine already has).
        """
        changed = self._queue_change
        with anyio.move_on_after(timeout):
            await changed.wait()
        return set()

    def _queue_changed(self) -> None:
        self._queue_change.set()
        self._queue_change = anyio.Event()

    @abc.abstractmethod
    async def update_job(self, job: Job, expected: JobStatus) -> Event:
        """Replace the record if its stored status is still ``expected``; append its event.

        Raises :class:`~server.errors.StaleJob` when the stored status differs. A job
        that completes also becomes its (project, agent)'s last result.
        """

    @abc.abstractmethod
    async def set_progress(self, job_id: str, progress: Progress) -> None:
        """Record a running job's latest progress. Not an event: progress is latest-value."""

    @abc.abstractmethod
    async def append_output(self, chunk: OutputChunk) -> None:
        """Append a running job's streamed text, if ``chunk.offset`` is where its attempt's output ends now
        (a retried write that landed already is not doubled; a new attempt starts again from 0)."""

    @abc.abstractmethod
    async def get_output(self, job_id: str) -> tuple[int, str] | None:
        """A running job's output so far, as ``(attempt, text)``; None if it streamed nothing."""

    async def outputs_of(self, project_id: str) -> list[OutputChunk]:
        """The output so far of each of the project's running jobs, from offset 0 (what a new subscriber gets)."""
        found = []
        for running in (await self.queue_state()).running:
            if running.project_id != project_id:
                continue
            output = await self.get_output(running.job_id)
            if output is not None and output[1]:
                attempt, text = output
                found.append(OutputChunk(project_id=project_id, agent=running.agent, job_id=running.job_id,
                                         attempt=attempt, offset=0, text=text))  # fmt: skip
        return found

    async def publish_output(self, chunk: OutputChunk) -> None:
        """Send streamed output to every process's readers (shared stores only), after it is appended."""
        raise NotImplementedError

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> Job | None: ...

    @abc.abstractmethod
    async def latest_job(self, project_id: str, agent: str) -> Job | None:
        """The active job of (project, agent), else its most recent one."""

    @abc.abstractmethod
    async def list_jobs(self, project_id: str, agent: str | None, limit: int) -> list[Job]:
        """History, newest first."""

    @abc.abstractmethod
    async def find_jobs(self, query: JobQuery) -> list[Job]:
        """Jobs of every project that match ``query``, newest first (by :func:`history_key`), up to its limit."""

    @abc.abstractmethod
    async def durations(self, agent: str, project_id: str | None, limit: int) -> list[float]:
        """How long the agent's last ``limit`` completed jobs ran (their last attempt), newest first;
        of one project, or of all (``None``). For the ETA."""

    @abc.abstractmethod
    async def last_results(self, project_id: str) -> dict[str, LastResult]:
        """The latest completed result of each agent of a project."""

    @abc.abstractmethod
    async def snapshot(self, project_id: str, agents: Sequence[str]) -> ProjectState:
        """The project's seq, and each agent's latest job and last result, read atomically."""

    @abc.abstractmethod
    async def active_jobs(self) -> list[Job]:
        """Every queued or running job, of every project."""

    @abc.abstractmethod
    async def project_ids(self) -> list[str]:
        """Projects that have at least one job, most recently active first."""

    @abc.abstractmethod
    async def last_seq(self, project_id: str) -> int:
        """The seq of the project's newest event, 0 before the first."""

    @abc.abstractmethod
    async def events_after(self, project_id: str, after: int, limit: int) -> list[Event]:
        """Up to ``limit`` events with seq > ``after``, oldest first."""

    async def wait_for_events(self, project_id: str, after: int, timeout: float) -> bool:
        """Wait until the project has an event past ``after``; False if ``timeout`` ran out."""
        with anyio.move_on_after(timeout if math.isfinite(timeout) else None):
            while True:
                changed = self._feed.next_change(project_id)
                if await self.last_seq(project_id) > after:
                    return True
                await changed.wait()
        return False

    def follower(self, project_id: str) -> Follower:
        """What a channel reader follows the project's log (and shared progress) with."""
        return Follower(self, project_id)

    async def publish_progress(self, update: ProgressUpdate) -> None:
        """Send progress to every process's readers (shared stores only)."""
        raise NotImplementedError

    async def renew_leases(self, job_ids: Collection[str]) -> LeaseReport:
        """Extend this process's leases on ``job_ids``; report leases lost and cancels asked elsewhere."""
        return LeaseReport()

    async def orphaned_jobs(self) -> list[Job]:
        """Running jobs whose process is gone. Queued jobs belong to no process: they wait for a thread.

        In a store only one process uses, that is every running job the caller does not run.
        """
        return [job for job in await self.active_jobs() if job.status is JobStatus.RUNNING]

    async def take_start(self, key: str, per_minute: int) -> float | None:
        """One job start against ``key``'s budget of ``per_minute``, across every process: 0 if allowed, else
        the seconds to wait. None: the store has no other process, and the process's own limiter decides."""
        return None

    async def connections_elsewhere(self, address: str, process: str, max_age: float) -> int:
        """Streams ``address`` holds in the other processes sharing the store, as each last published."""
        return 0

    async def publish_connections(self, process: str, counts: Mapping[str, int], max_age: float) -> None:
        """Publish this process's streams per client address (shared stores), good for ``max_age`` seconds."""

    async def publish_presence(self, process: str, counts: Mapping[str, int], max_age: float) -> None:
        """Publish this process's watchers per project (shared stores), good for ``max_age`` seconds."""

    async def presence_elsewhere(self, project_ids: Sequence[str], process: str, max_age: float) -> dict[str, int]:
        """Watchers of each project in the other processes sharing the store, as each last published."""
        return {}

    async def share_counts(self, process: str, counts: str, max_age: float) -> list[str]:
        """Publish this process's metrics (JSON) and return every process's published within ``max_age``
        seconds, this one's included. Only shared stores have other processes to add up."""
        return [counts]

    async def check_epoch(self) -> str:
        """The current epoch, after making sure it still describes the log (shared stores)."""
        return self.epoch

    def _notify(self, project_id: str) -> None:
        """Wake waiters once an append is durable."""
        self._feed.notify(project_id)


class Follower:
    """Follows one project's log for its channel reader."""

    def __init__(self, store: Store, project_id: str) -> None:
        self.store = store
        self.project_id = project_id

    async def start(self) -> None:
        """Take the live streams' positions now, before the channel says it is ready (shared stores)."""

    async def next(self, after: int, limit: int) -> tuple[list[Event], list[ProgressUpdate], list[OutputChunk]]:
        """Wait for events past ``after``; a shared store also returns other processes' progress and output."""
        while not (events := await self.store.events_after(self.project_id, after, limit)):
            await self.store.wait_for_events(self.project_id, after, math.inf)
        return events, [], []


class Outage:
    """How often the store failed, and for how long it has been unavailable in all."""

    def __init__(self) -> None:
        self.errors = 0
        self._down_since: float | None = None
        self._past = 0.0

    def failed(self) -> None:
        self.errors += 1
        if self._down_since is None:
            self._down_since = time.monotonic()

    def recovered(self) -> None:
        if self._down_since is not None:
            self._past += time.monotonic() - self._down_since
            self._down_since = None

    @property
    def seconds(self) -> float:
        ongoing = 0.0 if self._down_since is None else time.monotonic() - self._down_since
        return self._past + ongoing


def history_key(job: Job) -> tuple[float, str]:
    """Where a job stands in history: it never changes, so a page boundary stays put while jobs arrive."""
    return (job.created_at, job.job_id)


@dataclasses.dataclass(frozen=True)
class JobQuery:
    """A page of history across projects: filters, and the key of the last job of the page before."""

    #: the projects to look in; None: every project
    projects: frozenset[str] | None = None
    agent: str | None = None
    status: JobStatus | None = None
    started_by: str | None = None
    #: only jobs strictly older than this :func:`history_key`
    before: tuple[float, str] | None = None
    limit: int = 50

    def matches(self, job: Job) -> bool:
        return (
            (self.projects is None or job.project_id in self.projects)
            and (self.agent is None or job.agent == self.agent)
            and (self.status is None or job.status is self.status)
            and (self.started_by is None or job.started_by == self.started_by)
            and (self.before is None or history_key(job) < self.before)
        )

    def page(self, jobs: Iterable[Job]) -> list[Job]:
        """The matching jobs among ``jobs``, newest first, up to the limit."""
        return sorted(filter(self.matches, jobs), key=history_key, reverse=True)[: self.limit]


@dataclasses.dataclass(frozen=True)
class LeaseReport:
    #: jobs this process no longer holds: another process ended them, or they are gone
    lost: set[str] = dataclasses.field(default_factory=set)
    #: jobs this process runs whose cancel was requested through another process
    cancel_requested: set[str] = dataclasses.field(default_factory=set)


class ChangeFeed:
    """Wakes the tasks waiting on a project when its log grows.

    Waiters take the current event *before* reading the log, so an append that lands
    between the read and the wait still wakes them.
    """

    def __init__(self) -> None:
        self._events: dict[str, anyio.Event] = {}

    def next_change(self, project_id: str) -> anyio.Event:
        event = self._events.get(project_id)
        if event is None:
            event = self._events[project_id] = anyio.Event()
        return event

    def notify(self, project_id: str) -> None:
        event = self._events.pop(project_id, None)
        if event is not None:
            event.set()


class ActiveJobs:
    """The queued and running jobs of a store only this process writes, kept in memory for the scheduler."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._last_started: dict[str, float] = {}

    def apply(self, job: Job) -> None:
        """Called after every write that landed."""
        if job.status is JobStatus.RUNNING and job.started_at is not None:
            self._last_started[job.requester] = job.started_at
        if job.status.is_active:
            self._jobs[job.job_id] = job
        else:
            self._jobs.pop(job.job_id, None)

    def of(self, project_id: str, agent: str) -> list[Job]:
        """The (project, agent)'s active jobs, oldest first: the head, then any follow-up."""
        found = [job for job in self._jobs.values() if job.project_id == project_id and job.agent == agent]
        return sorted(found, key=lambda job: (job.created_at, job.job_id))

    def queued_count(self) -> int:
        return sum(job.status in (JobStatus.QUEUED, JobStatus.RETRYING) for job in self._jobs.values())

    def state(self) -> QueueState:
        return QueueState.of(self._jobs.values(), self._last_started)

    def jobs(self) -> list[Job]:
        return list(self._jobs.values())


def duration_of(job: Job) -> float | None:
    if job.status is not JobStatus.COMPLETED or job.started_at is None or job.finished_at is None:
        return None
    return job.finished_at - job.started_at


def newest_first(jobs: Sequence[Job], limit: int) -> list[Job]:
    return sorted(jobs, key=lambda job: job.created_at, reverse=True)[:limit]


def redacted(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and error messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
