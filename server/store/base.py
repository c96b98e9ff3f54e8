"""The store interface: jobs, last results and the per-project event log.

Every change to a job record goes through :meth:`Store.create_job` or
:meth:`Store.update_job`, which write the record and append its event in one
atomic step. ``update_job`` is a compare-and-set on the status the caller read, so
two writers can never both finish a job.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import urllib.parse
from collections.abc import Collection, Sequence

import anyio

from ..jobs import Event, Job, JobStatus, LastResult, Progress, ProgressUpdate, ProjectState


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
    async def create_job(self, job: Job) -> tuple[Job, bool]:
        """Insert a queued job unless one is active for its (project, agent).

        Returns ``(job, False)`` when inserted (its event appended), or
        ``(active_job, True)`` when one was already queued or running.
        """

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
    async def get_job(self, job_id: str) -> Job | None: ...

    @abc.abstractmethod
    async def latest_job(self, project_id: str, agent: str) -> Job | None:
        """The active job of (project, agent), else its most recent one."""

    @abc.abstractmethod
    async def list_jobs(self, project_id: str, agent: str | None, limit: int) -> list[Job]:
        """History, newest first."""

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
        """Queued or running jobs whose process is gone.

        In a store only one process uses, that is every active job the caller does not run.
        """
        return await self.active_jobs()

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

    async def next(self, after: int, limit: int) -> tuple[list[Event], list[ProgressUpdate]]:
        """Wait for events past ``after``; a shared store also returns other processes' progress."""
        while not (events := await self.store.events_after(self.project_id, after, limit)):
            await self.store.wait_for_events(self.project_id, after, math.inf)
        return events, []


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


def newest_first(jobs: Sequence[Job], limit: int) -> list[Job]:
    return sorted(jobs, key=lambda job: job.created_at, reverse=True)[:limit]


def redacted(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and error messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
