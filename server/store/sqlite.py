"""``sqlite:///path.db``: the embedded default. Jobs, results and the event log survive restarts.

One connection, used from one worker thread at a time (a limiter of 1), so the event
loop never waits on disk and writes are serialised; a refresh decides and writes in one
transaction, so what it sees of the agent's active jobs is what it changes. One process owns
the file (:mod:`.owner`): a second one is refused before it writes anything.

Errors name the file in the server log only; clients are told what failed, not where.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from ..errors import ConfigError, QueueFull, StaleJob, StoreUnavailable
from ..jobs import ACTIVE_STATES, Event, Job, JobStatus, LastResult, OutputChunk, Progress, ProjectState
from ..scheduling import IfActive, QueueState, decide_start
from .base import ActiveJobs, JobQuery, Store, duration_of
from .owner import OwnerLock

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: ``('queued', 'running')``, from the one definition in server/jobs.py
_ACTIVE = "(" + ", ".join(sorted(f"'{status.value}'" for status in ACTIVE_STATES)) + ")"

RUNNING = JobStatus.RUNNING.value
QUEUED = JobStatus.QUEUED.value

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_project ON jobs (project_id, agent, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_agent ON jobs (agent, status, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (created_at, job_id);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status) WHERE status IN {_ACTIVE};
DROP INDEX IF EXISTS one_active_job;
CREATE INDEX IF NOT EXISTS active_jobs ON jobs (project_id, agent) WHERE status IN {_ACTIVE};
CREATE TABLE IF NOT EXISTS last_results (
    project_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    job_id TEXT NOT NULL,
    result TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (project_id, agent)
);
CREATE TABLE IF NOT EXISTS projects (
    project_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outputs (
    job_id TEXT PRIMARY KEY,
    attempt INTEGER NOT NULL,
    length INTEGER NOT NULL,
    text TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    project_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (project_id, seq)
) WITHOUT ROWID;
"""

_LATEST_JOB = (
    "SELECT record FROM jobs WHERE project_id = ? AND agent = ? "
    f"ORDER BY status IN {_ACTIVE} DESC, created_at DESC LIMIT 1"
)


def path_from_url(url: str) -> str:
    """``sqlite:///jobcast.db`` is relative to the working directory; ``sqlite:////abs.db`` is absolute."""
    path = url.removeprefix("sqlite:///")
    if not path or path == url:
        raise ValueError("expected sqlite:///relative/path.db or sqlite:////absolute/path.db")
    return path


class SQLiteStore(Store):
    kind = "sqlite"

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._owner = OwnerLock(path)
        self._failing = False
        #: the queue, in memory: this process is the only writer, and the file is the truth at open
        self._active = ActiveJobs()

    def claim(self, serving: str | None = None) -> None:
        """Own and open the file before the server starts, so a failure is one line, not a traceback."""
        try:
            self._open(serving)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the SQLite store at {self.path}: {exc}") from None

    async def open(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._owner.release()

    def _open(self, serving: str | None = None) -> None:
        if self._db is not None:
            return  # claimed already
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._owner.acquire(serving)  # before the first write: a second process must change nothing
        try:
            self._db = self._connect()
        except BaseException:
            self._owner.release()
            raise

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            self.epoch = _ensure_epoch(db)
            for (record,) in db.execute(f"SELECT record FROM jobs WHERE status IN {_ACTIVE}"):
                self._active.apply(_job(record))
        except BaseException:
            db.close()
            raise
        return db

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        try:
            result = await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)
        except sqlite3.Error as exc:
            # The path stays in the log: clients learn what failed, never where the file lives.
            if not self._failing:
                logger.warning("the SQLite store at %s failed: %s", self.path, exc)
            self._failing = True
            self.outage.failed()
            raise StoreUnavailable(f"the store failed ({exc}); try again shortly") from exc
        if self._failing:
            self._failing = False
            self.outage.recovered()
            logger.warning("the SQLite store at %s works again", self.path)
        return result

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with _transaction(self._connection()) as db:
            yield db

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("the store is not open")
        return self._db

    # -- writes ---------------------------------------------------------------

    async def create_job(
        self, job: Job, if_active: IfActive = IfActive.ATTACH, max_queued: int = 0
    ) -> tuple[Job, bool]:
        stored, deduplicated, written = await self._run(self._create_job, job, if_active, max_queued)
        for record in written:
            self._active.apply(record)
        if not deduplicated:
            self._notify(job.project_id)
            self._queue_changed()
        return stored, deduplicated

    def _create_job(self, job: Job, if_active: IfActive, max_queued: int) -> tuple[Job, bool, list[Job]]:
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT record FROM jobs WHERE project_id = ? AND agent = ? AND status IN {_ACTIVE} "
                "ORDER BY created_at, job_id",
                (job.project_id, job.agent),
            ).fetchall()
            decision = decide_start([_job(row[0]) for row in rows], job, if_active)
            if decision.insert is None:
                return decision.job, True, []
            if max_queued:
                (queued,) = db.execute(f"SELECT count(*) FROM jobs WHERE status = '{QUEUED}'").fetchone()
                if queued - len(decision.cancel) >= max_queued:
                    raise QueueFull(max_queued)
            written = []
            for record in decision.cancel:
                self._write(db, record, JobStatus.QUEUED)
                written.append(record)
            if decision.stop is not None:
                self._write(db, decision.stop, JobStatus.RUNNING)
                written.append(decision.stop)
            new = decision.insert
            db.execute(
                "INSERT INTO jobs (job_id, project_id, agent, status, created_at, record) VALUES (?, ?, ?, ?, ?, ?)",
                (new.job_id, new.project_id, new.agent, new.status.value, new.created_at, _record(new)),
            )
            self._append(db, new)
        return decision.job, False, [*written, new]

    async def queue_state(self) -> QueueState:
        return self._active.state()

    async def update_job(self, job: Job, expected: JobStatus) -> Event:
        event = await self._run(self._update_job, job, expected)
        self._active.apply(job)
        self._notify(job.project_id)
        if job.status is not expected:
            self._queue_changed()
        return event

    def _update_job(self, job: Job, expected: JobStatus) -> Event:
        with self._transaction() as db:
            return self._write(db, job, expected)

    def _write(self, db: sqlite3.Connection, job: Job, expected: JobStatus) -> Event:
        """Inside a transaction: the compare-and-set on status, the last result, the event."""
        changed = db.execute(
            "UPDATE jobs SET status = ?, record = ? WHERE job_id = ? AND status = ?",
            (job.status.value, _record(job), job.job_id, expected.value),
        ).rowcount
        if changed != 1:
            raise StaleJob(job.job_id, expected.value)
        if job.status.is_final:
            db.execute("DELETE FROM outputs WHERE job_id = ?", (job.job_id,))  # the final record holds it
        if job.status is JobStatus.COMPLETED and job.result is not None:
            db.execute(
                "INSERT OR REPLACE INTO last_results (project_id, agent, job_id, result, at) VALUES (?, ?, ?, ?, ?)",
                (job.project_id, job.agent, job.job_id, json.dumps(job.result), job.updated_at),
            )
        return self._append(db, job)

    def _append(self, db: sqlite3.Connection, job: Job) -> Event:
        row = db.execute(
            "INSERT INTO projects (project_id, seq, updated_at) VALUES (?, 1, ?) "
            "ON CONFLICT (project_id) DO UPDATE SET seq = seq + 1, updated_at = excluded.updated_at "
            "RETURNING seq",
            (job.project_id, job.updated_at),
        ).fetchone()
        event = Event(epoch=self.epoch, seq=row[0], job=job)
        db.execute(
            "INSERT INTO events (project_id, seq, body) VALUES (?, ?, ?)",
            (job.project_id, event.seq, _record(job)),
        )
        return event

    async def set_progress(self, job_id: str, progress: Progress) -> None:
        await self._run(self._set_progress, job_id, progress)

    def _set_progress(self, job_id: str, progress: Progress) -> None:
        self._connection().execute(
            "UPDATE jobs SET record = json_set(record, '$.progress', json(?)) "
            f"WHERE job_id = ? AND status = '{RUNNING}'",
            (json.dumps(progress.to_dict()), job_id),
        )

    async def append_output(self, chunk: OutputChunk) -> None:
        await self._run(self._append_output, chunk)

    def _append_output(self, chunk: OutputChunk) -> None:
        with self._transaction() as db:
            row = db.execute("SELECT attempt, length FROM outputs WHERE job_id = ?", (chunk.job_id,)).fetchone()
            if row is None or row[0] != chunk.attempt:
                if chunk.offset == 0:
                    db.execute(
                        "INSERT OR REPLACE INTO outputs (job_id, attempt, length, text) VALUES (?, ?, ?, ?)",
                        (chunk.job_id, chunk.attempt, len(chunk.text), chunk.text),
                    )
            elif row[1] == chunk.offset:
                db.execute(
                    "UPDATE outputs SET text = text || ?, length = length + ? WHERE job_id = ?",
                    (chunk.text, len(chunk.text), chunk.job_id),
                )

    async def get_output(self, job_id: str) -> tuple[int, str] | None:
        rows = await self._rows("SELECT attempt, text FROM outputs WHERE job_id = ?", job_id)
        return (rows[0][0], rows[0][1]) if rows else None

    # -- reads ----------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job | None:
        return await self._one("SELECT record FROM jobs WHERE job_id = ?", job_id)

    async def latest_job(self, project_id: str, agent: str) -> Job | None:
        return await self._one(_LATEST_JOB, project_id, agent)

    async def list_jobs(self, project_id: str, agent: str | None, limit: int) -> list[Job]:
        if agent is None:
            query = "SELECT record FROM jobs WHERE project_id = ? ORDER BY created_at DESC LIMIT ?"
            return await self._many(query, project_id, limit)
        query = "SELECT record FROM jobs WHERE project_id = ? AND agent = ? ORDER BY created_at DESC LIMIT ?"
        return await self._many(query, project_id, agent, limit)

    async def find_jobs(self, query: JobQuery) -> list[Job]:
        where: list[str] = ["1"]
        params: list[object] = []
        if query.projects is not None:
            where.append(f"project_id IN ({', '.join('?' * len(query.projects))})")
            params.extend(sorted(query.projects))
        for column, value in (("agent", query.agent), ("status", query.status and query.status.value)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if query.started_by is not None:
            where.append("json_extract(record, '$.started_by') = ?")
            params.append(query.started_by)
        if query.before is not None:
            where.append("(created_at < ? OR (created_at = ? AND job_id < ?))")
            params.extend([query.before[0], query.before[0], query.before[1]])
        sql = f"SELECT record FROM jobs WHERE {' AND '.join(where)} ORDER BY created_at DESC, job_id DESC LIMIT ?"
        return await self._many(sql, *params, query.limit)

    async def durations(self, agent: str, project_id: str | None, limit: int) -> list[float]:
        where = "agent = ? AND status = 'completed'" + ("" if project_id is None else " AND project_id = ?")
        params = (agent,) if project_id is None else (agent, project_id)
        jobs = await self._many(
            f"SELECT record FROM jobs WHERE {where} ORDER BY created_at DESC LIMIT ?", *params, limit
        )
        return [value for value in map(duration_of, jobs) if value is not None]

    async def snapshot(self, project_id: str, agents: Sequence[str]) -> ProjectState:
        # One call on the store's single connection: no write can land between the reads.
        return await self._run(self._snapshot, project_id, list(agents))

    def _snapshot(self, project_id: str, agents: list[str]) -> ProjectState:
        db = self._connection()
        row = db.execute("SELECT seq FROM projects WHERE project_id = ?", (project_id,)).fetchone()
        jobs: dict[str, Job | None] = {}
        for agent in agents:
            found = db.execute(_LATEST_JOB, (project_id, agent)).fetchone()
            jobs[agent] = None if found is None else _job(found[0])
        results = db.execute(
            "SELECT agent, job_id, result, at FROM last_results WHERE project_id = ?", (project_id,)
        ).fetchall()
        return ProjectState(
            seq=row[0] if row else 0,
            jobs=jobs,
            results={a: LastResult(job_id=j, result=json.loads(r), at=at) for a, j, r, at in results},
        )

    async def active_jobs(self) -> list[Job]:
        return await self._many(f"SELECT record FROM jobs WHERE status IN {_ACTIVE}")

    async def last_results(self, project_id: str) -> dict[str, LastResult]:
        rows = await self._rows("SELECT agent, job_id, result, at FROM last_results WHERE project_id = ?", project_id)
        return {
            agent: LastResult(job_id=job_id, result=json.loads(result), at=at) for agent, job_id, result, at in rows
        }

    async def project_ids(self) -> list[str]:
        rows = await self._rows("SELECT project_id FROM projects ORDER BY updated_at DESC")
        return [row[0] for row in rows]

    async def last_seq(self, project_id: str) -> int:
        rows = await self._rows("SELECT seq FROM projects WHERE project_id = ?", project_id)
        return rows[0][0] if rows else 0

    async def events_after(self, project_id: str, after: int, limit: int) -> list[Event]:
        rows = await self._rows(
            "SELECT seq, body FROM events WHERE project_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            project_id,
            after,
            limit,
        )
        return [Event(epoch=self.epoch, seq=seq, job=_job(body)) for seq, body in rows]

    async def _one(self, query: str, *params: Any) -> Job | None:
        rows = await self._rows(query, *params)
        return _job(rows[0][0]) if rows else None

    async def _many(self, query: str, *params: Any) -> list[Job]:
        return [_job(row[0]) for row in await self._rows(query, *params)]

    async def _rows(self, query: str, *params: Any) -> list[Any]:
        return await self._run(lambda: self._connection().execute(query, params).fetchall())


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    _roll_back(db)  # a transaction a failed write left open (a full disk) must not block every later one
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        _roll_back(db)
        raise


def _roll_back(db: sqlite3.Connection) -> None:
    if db.in_transaction:  # SQLite may have rolled back by itself (SQLITE_FULL)
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


def _ensure_epoch(db: sqlite3.Connection) -> str:
    with _transaction(db):
        row = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        if row is None:
            row = (uuid.uuid4().hex[:12],)
            db.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", row)
    return str(row[0])


def _record(job: Job) -> str:
    return json.dumps(job.to_record())


def _job(record: str) -> Job:
    return Job.from_record(json.loads(record))
