"""Job records and the one place where their legal state transitions are written down.

Nothing here does I/O: the engine decides, the store persists, and both call
:meth:`Job.transition` so an illegal move raises the same way everywhere.
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from .errors import IllegalTransition


class JobStatus(enum.StrEnum):
    #: accepted, waiting for a free thread and its limits (:mod:`server.scheduling`)
    QUEUED = "queued"
    #: the agent's ``refresh`` is running in a worker thread
    RUNNING = "running"
    #: an attempt failed in a way worth retrying; the next waits for ``retry_at``, then for the queue
    RETRYING = "retrying"
    #: the agent returned a result
    COMPLETED = "completed"
    #: the agent raised, or the server lost the job (``error.code == "interrupted"``)
    FAILED = "failed"
    #: a client asked to cancel and the job stopped
    CANCELLED = "cancelled"
    #: the job outlived its timeout; whatever the thread returns later is discarded
    TIMED_OUT = "timed_out"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    @property
    def is_active(self) -> bool:
        return not self.is_final


FINAL_STATES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT})
#: The rest. Stores spell both sets in their own languages (SQL, Lua) from these, and the
#: client and the dashboard keep copies that tests compare with them.
ACTIVE_STATES = frozenset(JobStatus) - FINAL_STATES

#: Every legal move. ``failed`` is reachable from ``queued`` and ``retrying`` only for jobs
#: the server lost, never from agent code. ``running -> queued`` requeues an idempotent
#: agent's job whose process died (docs/retries.md).
TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: FINAL_STATES | {JobStatus.RETRYING, JobStatus.QUEUED},
    JobStatus.RETRYING: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
    JobStatus.TIMED_OUT: frozenset(),
}


def check_transition(current: JobStatus, target: JobStatus) -> None:
    """Raise :class:`IllegalTransition` unless ``current -> target`` is allowed."""
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(current.value, target.value)


def now() -> float:
    return datetime.now(UTC).timestamp()


def isoformat(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Progress:
    percent: float | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"percent": self.percent, "message": self.message}


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobError:
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Job:
    """One run of one agent for one project. Immutable: every change is a new record."""

    job_id: str
    project_id: str
    agent: str
    status: JobStatus
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress: Progress = Progress()
    cancel_requested: bool = False
    result: dict[str, Any] | None = None
    error: JobError | None = None
    #: ``high``, ``normal`` or ``low`` (:class:`~server.scheduling.Priority`): the order of the queue
    priority: str = "normal"
    #: the token's subject, or None in open mode
    started_by: str | None = None
    #: who the scheduler counts the job against: the subject, else the client address; not public
    requester: str = ""
    #: a follow-up waits for this job (the one active when it was asked for) to end before it starts
    after: str | None = None
    #: where the job ran: ``{"host": ..., "pid": ...}``, once it starts
    runner: dict[str, Any] | None = None
    #: which attempt is running (or, while retrying, comes next), from 1; and how many the agent allows
    attempt: int = 1
    max_attempts: int = 1
    #: while retrying: when the next attempt may start
    retry_at: float | None = None
    #: each ended attempt: ``{"attempt", "started_at", "finished_at", "status", "error"}``
    attempts: tuple[dict[str, Any], ...] = ()
    #: from the agent's history when the attempt started: its typical duration and its 90th percentile
    expected_s: float | None = None
    overdue_after_s: float | None = None
    #: what the agent streamed (``ctx.stream``), once the job has ended; while it runs the store keeps it apart
    output: str | None = None
    #: the output passed ``--max-output-bytes`` and was cut there
    output_truncated: bool = False

    @classmethod
    def new(
        cls,
        project_id: str,
        agent: str,
        *,
        priority: str = "normal",
        started_by: str | None = None,
        requester: str = "",
        max_attempts: int = 1,
    ) -> Job:
        created = now()
        return cls(
            max_attempts=max_attempts,
            job_id=uuid.uuid4().hex,
            project_id=project_id,
            agent=agent,
            status=JobStatus.QUEUED,
            created_at=created,
            updated_at=created,
            priority=priority,
            started_by=started_by,
            requester=requester or (started_by or ""),
        )

    def following(self, job_id: str | None) -> Job:
        return dataclasses.replace(self, after=job_id)

    def started_on(self, runner: Mapping[str, Any]) -> Job:
        """The running record, as claimed by the process ``runner`` names."""
        return dataclasses.replace(self.transition(JobStatus.RUNNING), runner=dict(runner))

    def transition(
        self,
        target: JobStatus,
        *,
        result: dict[str, Any] | None = None,
        error: JobError | None = None,
        at: float | None = None,
        retry_at: float | None = None,
    ) -> Job:
        """Return the record after moving to ``target``; raise if the move is illegal.

        Leaving ``running`` ends an attempt, which joins ``attempts``; going to ``retrying``
        (with ``retry_at``) or back to ``queued`` makes the next attempt the current one.
        """
        check_transition(self.status, target)
        moment = now() if at is None else at
        changes: dict[str, Any] = {"status": target, "updated_at": moment}
        if self.status is JobStatus.RUNNING:
            changes["attempts"] = (*self.attempts, self._attempt_record(target, moment, error))
        if target is JobStatus.RUNNING:
            changes.update(started_at=moment, error=None, retry_at=None)
        if target in (JobStatus.RETRYING, JobStatus.QUEUED) and self.status is JobStatus.RUNNING:
            changes.update(attempt=self.attempt + 1, error=error, retry_at=retry_at, cancel_requested=False)
        if target.is_final:
            changes["finished_at"] = moment
            changes["result"] = result if target is JobStatus.COMPLETED else None
            changes["error"] = error
        return dataclasses.replace(self, **changes)

    def _attempt_record(self, ended: JobStatus, moment: float, error: JobError | None) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "started_at": self.started_at,
            "finished_at": moment,
            "status": ended.value,
            "error": None if error is None else error.to_dict(),
        }

    @property
    def attempts_left(self) -> int:
        return self.max_attempts - self.attempt

    def with_output(self, output: str | None, truncated: bool) -> Job:
        return dataclasses.replace(self, output=output, output_truncated=truncated)

    def with_estimate(self, expected_s: float | None, overdue_after_s: float | None) -> Job:
        return dataclasses.replace(self, expected_s=expected_s, overdue_after_s=overdue_after_s)

    def with_cancel_requested(self) -> Job:
        return dataclasses.replace(self, cancel_requested=True, updated_at=now())

    def with_progress(self, progress: Progress) -> Job:
        return dataclasses.replace(self, progress=progress)

    def elapsed_s(self, at: float | None = None) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else (now() if at is None else at)
        return round(max(0.0, end - self.started_at), 3)

    def to_dict(self, at: float | None = None, queue: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The public JSON shape of a job, the same in every API and event.

        ``queue`` is where a queued job stands (:mod:`server.scheduling`), when the caller knows it.
        """
        return {
            "job_id": self.job_id,
            "project_id": self.project_id,
            "agent": self.agent,
            "status": self.status.value,
            "created_at": isoformat(self.created_at),
            "updated_at": isoformat(self.updated_at),
            "started_at": isoformat(self.started_at),
            "finished_at": isoformat(self.finished_at),
            "elapsed_s": self.elapsed_s(at),
            "progress": self.progress.to_dict(),
            "cancel_requested": self.cancel_requested,
            "result": self.result,
            "error": None if self.error is None else self.error.to_dict(),
            "priority": self.priority,
            "started_by": self.started_by,
            "after": self.after,
            "runner": self.runner,
            "queue": None if queue is None else dict(queue),
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "retry_at": isoformat(self.retry_at),
            "attempts": [_public_attempt(entry) for entry in self.attempts],
            **estimate(self, at),
            "output": self.output,
            "output_truncated": self.output_truncated,
        }

    def to_record(self) -> dict[str, Any]:
        """A lossless JSON form for stores (raw timestamps), unlike the public :meth:`to_dict`."""
        record = dataclasses.asdict(self)
        record["status"] = self.status.value
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Job:
        error = record.get("error")
        return cls(
            **{
                **record,
                "status": JobStatus(record["status"]),
                "progress": Progress(**record["progress"]),
                "error": None if error is None else JobError(**error),
                "attempts": tuple(record.get("attempts", ())),
            }
        )


def _public_attempt(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **entry,
        "started_at": isoformat(entry.get("started_at")),
        "finished_at": isoformat(entry.get("finished_at")),
    }


def estimate(job: Job, at: float | None = None) -> dict[str, Any]:
    """``expected_s``, ``eta_s`` and ``overdue`` of a running job (docs/retries.md, "ETA"); nulls otherwise."""
    if job.status is not JobStatus.RUNNING or job.started_at is None:
        return {"expected_s": job.expected_s, "eta_s": None, "overdue": False}
    elapsed = max(0.0, (now() if at is None else at) - job.started_at)
    return eta_fields(job.expected_s, job.overdue_after_s, elapsed, job.progress.percent)


def eta_fields(
    expected_s: float | None, overdue_after_s: float | None, elapsed: float, percent: float | None
) -> dict[str, Any]:
    """Seconds left from the typical duration and the reported percent: by the percent
    (``elapsed * (100 - p) / p``) weighted by how far along the job says it is, the rest from
    ``expected - elapsed``; never negative. None without history."""
    if expected_s is None:
        return {"expected_s": None, "eta_s": None, "overdue": False}
    by_history = max(0.0, expected_s - elapsed)
    if percent is not None and percent > 0:
        weight = min(percent, 100.0) / 100
        by_percent = elapsed * (100 - min(percent, 100.0)) / min(percent, 100.0)
        left = weight * by_percent + (1 - weight) * by_history
    else:
        left = by_history
    overdue = overdue_after_s is not None and elapsed > overdue_after_s
    return {"expected_s": round(expected_s, 3), "eta_s": round(max(0.0, left), 1), "overdue": overdue}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Event:
    """One entry of a project's event log: a job record as it was after a change."""

    epoch: str
    seq: int
    job: Job

    def to_dict(self) -> dict[str, Any]:
        """The ``job`` message. Its record leaves ``output`` out (null): output reaches a subscriber as
        ``output`` messages before the final transition, so a long text is not sent twice to everyone."""
        return {
            "type": "job",
            "epoch": self.epoch,
            "seq": self.seq,
            "project_id": self.job.project_id,
            "agent": self.job.agent,
            "job": {**self.job.to_dict(at=self.job.updated_at), "output": None},
        }

    def output(self) -> OutputChunk | None:
        """A final job's whole output as one piece from offset 0 (what a replay sends before the event)."""
        job, text = self.job, self.job.output
        if not job.status.is_final or not text:
            return None
        return OutputChunk(project_id=job.project_id, agent=job.agent, job_id=job.job_id, attempt=job.attempt,
                           offset=0, text=text)  # fmt: skip


@dataclasses.dataclass(frozen=True, kw_only=True)
class LastResult:
    """The latest completed result of one agent for one project."""

    job_id: str
    result: dict[str, Any]
    at: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProgressUpdate:
    """A running job's latest percent and message, as the engine publishes it."""

    project_id: str
    agent: str
    job_id: str
    seq: int
    started_at: float
    percent: float | None
    message: str | None
    #: the job's typical duration and its 90th percentile, from its history (None: no history)
    expected_s: float | None = None
    overdue_after_s: float | None = None

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ProgressUpdate:
        return cls(**record)

    def to_dict(self, at: float | None = None) -> dict[str, Any]:
        elapsed = max(0.0, (now() if at is None else at) - self.started_at)
        return {
            "type": "progress",
            "project_id": self.project_id,
            "agent": self.agent,
            "job_id": self.job_id,
            "elapsed_s": round(elapsed, 3),
            "percent": self.percent,
            "message": self.message,
            "seq": self.seq,
            **eta_fields(self.expected_s, self.overdue_after_s, elapsed, self.percent),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutputChunk:
    """Text a running job streamed: ``text`` starts at character ``offset`` of the attempt's output."""

    project_id: str
    agent: str
    job_id: str
    attempt: int
    offset: int
    text: str

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> OutputChunk:
        return cls(**record)

    @property
    def end(self) -> int:
        return self.offset + len(self.text)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "output", **self.to_record()}

    def after(self, length: int) -> OutputChunk | None:
        """The part of this chunk past the first ``length`` characters (None if it has none)."""
        if self.end <= length:
            return None
        if self.offset >= length:
            return self
        return dataclasses.replace(self, offset=length, text=self.text[length - self.offset :])

    def followed_by(self, later: OutputChunk) -> OutputChunk | None:
        """This chunk and ``later`` as one, if ``later`` continues it (the same attempt, no gap)."""
        if later.attempt != self.attempt or later.offset > self.end:
            return None
        rest = later.after(self.end)
        return self if rest is None else dataclasses.replace(self, text=self.text + rest.text)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProjectState:
    """A project as of one seq: what a snapshot sends."""

    seq: int
    jobs: dict[str, Job | None]
    results: dict[str, LastResult]
