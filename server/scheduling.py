"""The scheduling rules, as pure functions: which queued job starts next, and why the others wait.

Every store asks the same questions of the same data, so the rules live once, here:

* **Priority first.** ``high`` before ``normal`` before ``low``.
* **Then fair share.** Within a priority, a job's *turn* is the number of jobs its user
  has running (any priority) plus the number of that user's older jobs queued at the
  same priority. Lower turns go first. Among equal turns, the user who started a job
  least recently (or never) goes first, then the oldest job. So users take turns: one
  user's 50 queued jobs hold turns 0 to 49, another user's single job holds turn 0 and
  goes before the first user's next one.
* **Then limits.** The first job in that order that no limit holds back starts. A job
  over a limit (``--max-running-per-project``, an agent's ``max_running``,
  ``--max-running-per-user``) or a follow-up whose previous job is still active stays
  queued and keeps its place; nothing is dropped.

docs/scheduling.md tells the same with a worked example.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

from .errors import InvalidInput
from .jobs import Job, JobError, JobStatus, now


class Priority(enum.StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    @classmethod
    def parse(cls, value: object) -> Priority:
        if isinstance(value, str) and value in _BY_VALUE:
            return _BY_VALUE[value]
        shown = repr(value)[:40]
        raise InvalidInput("invalid_priority", f"priority must be one of high, normal, low, not {shown}")


_RANKS = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}
_BY_VALUE = {priority.value: priority for priority in Priority}


class IfActive(enum.StrEnum):
    """What a refresh does when the agent already has an active job for the project."""

    #: return the active job (single flight, the default)
    ATTACH = "attach"
    #: cancel the active job and queue a new one, which starts once the old one has stopped
    REPLACE = "replace"
    #: queue one follow-up that starts after the active job ends; asking again attaches to it
    QUEUE = "queue"

    @classmethod
    def parse(cls, value: object) -> IfActive:
        for mode in cls:
            if value == mode.value:
                return mode
        shown = repr(value)[:40]
        raise InvalidInput("invalid_if_active", f"if_active must be one of attach, replace, queue, not {shown}")


class Waiting(enum.StrEnum):
    """Why a queued job has not started."""

    THREAD = "thread"
    PROJECT_LIMIT = "project_limit"
    AGENT_LIMIT = "agent_limit"
    USER_LIMIT = "user_limit"
    PREVIOUS_JOB = "previous_job"
    #: a retrying job waits for its ``retry_at`` before it rejoins the line
    RETRY = "retry"


@dataclasses.dataclass(frozen=True)
class Caps:
    """The limits on running jobs; 0 means no limit."""

    per_project: int = 0
    per_user: int = 0
    #: an agent's ``max_running``, by agent name
    per_agent: Mapping[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Queued:
    """What the scheduler needs of a queued job."""

    job_id: str
    project_id: str
    agent: str
    priority: Priority
    requester: str
    created_at: float
    after: str | None = None
    #: a retrying job's ``retry_at``: it may not start before
    not_before: float | None = None

    @classmethod
    def of(cls, job: Job) -> Queued:
        not_before = job.retry_at if job.status is JobStatus.RETRYING else None
        return cls(
            job.job_id,
            job.project_id,
            job.agent,
            Priority(job.priority),
            job.requester,
            job.created_at,
            job.after,
            not_before,
        )

    def to_record(self) -> list[Any]:
        return [
            self.job_id, self.project_id, self.agent, self.priority.value, self.requester, self.created_at,
            self.after, self.not_before,
        ]  # fmt: skip

    @classmethod
    def from_record(cls, record: Sequence[Any]) -> Queued:
        job_id, project_id, agent, priority, requester, created_at, after, *rest = record
        not_before = rest[0] if rest else None
        return cls(job_id, project_id, agent, Priority(priority), requester, float(created_at), after, not_before)


@dataclasses.dataclass(frozen=True)
class RunningJob:
    """What the scheduler needs of a running job: what it counts against."""

    job_id: str
    project_id: str
    agent: str
    requester: str

    @classmethod
    def of(cls, job: Job) -> RunningJob:
        return cls(job.job_id, job.project_id, job.agent, job.requester)

    def to_record(self) -> list[str]:
        return [self.job_id, self.project_id, self.agent, self.requester]

    @classmethod
    def from_record(cls, record: Sequence[str]) -> RunningJob:
        return cls(*record)


@dataclasses.dataclass(frozen=True)
class QueueState:
    """Every queued and running job of the cluster, as one store read saw them."""

    queued: Sequence[Queued]
    running: Sequence[RunningJob]
    #: when each user last had a job started: among equal turns, the least recent goes first
    last_started: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, jobs: Iterable[Job], last_started: Mapping[str, float] | None = None) -> QueueState:
        queued, running = [], []
        for job in jobs:
            if job.status in (JobStatus.QUEUED, JobStatus.RETRYING):
                queued.append(Queued.of(job))
            elif job.status is JobStatus.RUNNING:
                running.append(RunningJob.of(job))
        return cls(queued, running, dict(last_started or {}))


@dataclasses.dataclass(frozen=True)
class Place:
    """Where a queued job stands: ``position`` 1 is the next to start."""

    job_id: str
    project_id: str
    agent: str
    position: int
    waiting_for: Waiting
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """The ``queue`` object of a job record."""
        return {"position": self.position, "waiting_for": self.waiting_for.value, "detail": self.detail}


class _Load:
    """Running jobs counted by project, agent and user."""

    def __init__(self, running: Iterable[RunningJob]) -> None:
        self.ids: set[str] = set()
        self.projects: collections.Counter[str] = collections.Counter()
        self.agents: collections.Counter[str] = collections.Counter()
        self.users: collections.Counter[str] = collections.Counter()
        for job in running:
            self.ids.add(job.job_id)
            self.projects[job.project_id] += 1
            self.agents[job.agent] += 1
            self.users[job.requester] += 1


def ordered(state: QueueState) -> list[Queued]:
    """The queued jobs in the order they get their turn (priority, then fair share, then age)."""
    load = _Load(state.running)
    seen: collections.Counter[tuple[Priority, str]] = collections.Counter()
    keyed = []
    for job in sorted(state.queued, key=lambda job: (job.created_at, job.job_id)):
        turn = load.users[job.requester] + seen[(job.priority, job.requester)]
        seen[(job.priority, job.requester)] += 1
        served = state.last_started.get(job.requester, 0.0)
        keyed.append(((job.priority.rank, turn, served, job.created_at, job.job_id), job))
    keyed.sort(key=lambda pair: pair[0])
    return [job for _, job in keyed]


def _held_back(job: Queued, load: _Load, active: set[str], caps: Caps, moment: float) -> tuple[Waiting, str] | None:
    """The limit (or previous job, or retry time) that keeps ``job`` from starting now, if any."""
    if job.not_before is not None and job.not_before > moment:
        return Waiting.RETRY, f"next attempt in {max(1, round(job.not_before - moment))} s"
    if job.after is not None and job.after in active:
        return Waiting.PREVIOUS_JOB, f"waiting for job {job.after[:8]} to end"
    running = load.projects[job.project_id]
    if caps.per_project and running >= caps.per_project:
        return Waiting.PROJECT_LIMIT, f"project limit {running} of {caps.per_project}"
    cap = caps.per_agent.get(job.agent, 0)
    running = load.agents[job.agent]
    if cap and running >= cap:
        return Waiting.AGENT_LIMIT, f"agent limit {running} of {cap}"
    running = load.users[job.requester]
    if caps.per_user and running >= caps.per_user:
        return Waiting.USER_LIMIT, f"user limit {running} of {caps.per_user}"
    return None


def next_startable(
    state: QueueState, caps: Caps, runnable: Collection[str] | None = None, moment: float | None = None
) -> Queued | None:
    """The job a free thread takes now: the first in :func:`ordered` that nothing holds back.

    ``runnable``: the agents the process has (a ``jobcast worker --agent ...`` runs only those).
    """
    return next(startable(state, caps, runnable, moment), None)


def startable(
    state: QueueState, caps: Caps, runnable: Collection[str] | None = None, moment: float | None = None
) -> Iterator[Queued]:
    """Every job nothing holds back now, in order: the first is :func:`next_startable`, the rest are
    what a thread tries when another process took the first meanwhile."""
    load = _Load(state.running)
    active = load.ids | {job.job_id for job in state.queued}
    moment = now() if moment is None else moment
    for job in ordered(state):
        if runnable is not None and job.agent not in runnable:
            continue
        if _held_back(job, load, active, caps, moment) is None:
            yield job


def next_retry_at(state: QueueState) -> float | None:
    """When the earliest retrying job may start: the scheduler looks again then."""
    return min((job.not_before for job in state.queued if job.not_before is not None), default=None)


def places(state: QueueState, caps: Caps, moment: float | None = None) -> list[Place]:
    """Every queued (or retrying) job's place and what it waits for, in order."""
    load = _Load(state.running)
    active = load.ids | {job.job_id for job in state.queued}
    moment = now() if moment is None else moment
    found = []
    for position, job in enumerate(ordered(state), start=1):
        held = _held_back(job, load, active, caps, moment)
        if held is None:
            ahead = position - 1
            held = Waiting.THREAD, "next to start" if ahead == 0 else f"{ahead} ahead in the queue"
        found.append(Place(job.job_id, job.project_id, job.agent, position, *held))
    return found


def over_limit(job: Queued, state: QueueState, caps: Caps) -> tuple[Waiting, str] | None:
    """Whether ``job`` is held back now (a claim checks this atomically with the start)."""
    load = _Load(state.running)
    return _held_back(job, load, load.ids | {queued.job_id for queued in state.queued}, caps, now())


# -- what a refresh does to the agent's active jobs ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class StartDecision:
    """The writes one refresh makes, decided from the (project, agent)'s active jobs."""

    #: the job the caller gets back
    job: Job
    deduplicated: bool
    #: the new queued job to insert, if any
    insert: Job | None = None
    #: queued jobs to end ``cancelled`` (their new records)
    cancel: tuple[Job, ...] = ()
    #: a running job to ask to stop (its record with ``cancel_requested``)
    stop: Job | None = None


def decide_start(active: Sequence[Job], new: Job, if_active: IfActive) -> StartDecision:
    """What a refresh does, given the (project, agent)'s active jobs, oldest first.

    There are at most two: the *head* (queued or running) and one *follow-up* queued
    after it. Embedded stores apply the decision in one transaction; the Redis store's
    create script makes the same one in Lua.
    """
    if not active:
        return StartDecision(new, False, insert=new)
    head, newest = active[0], active[-1]
    if if_active is IfActive.ATTACH:
        return StartDecision(newest, True)
    if if_active is IfActive.QUEUE:
        if len(active) > 1:
            return StartDecision(newest, True)
        follow_up = new.following(head.job_id)
        return StartDecision(follow_up, False, insert=follow_up)
    reason = JobError(code="cancelled", message=f"replaced by job {new.job_id}")
    cancel = tuple(
        job.with_cancel_requested().transition(JobStatus.CANCELLED, error=reason)
        for job in active
        if job.status in (JobStatus.QUEUED, JobStatus.RETRYING)
    )
    if head.status is JobStatus.RUNNING:
        stop = None if head.cancel_requested else head.with_cancel_requested()
        replacement = new.following(head.job_id)
        return StartDecision(replacement, False, insert=replacement, cancel=cancel, stop=stop)
    return StartDecision(new, False, insert=new, cancel=cancel)
