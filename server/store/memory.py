"""``memory://``: everything in this process, gone at exit. For throwaway use and tests."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence

from ..errors import StaleJob
from ..jobs import Event, Job, JobStatus, LastResult, Progress, ProjectState
from .base import Store, newest_first


class MemoryStore(Store):
    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.epoch = uuid.uuid4().hex[:12]
        self._jobs: dict[str, Job] = {}
        self._active: dict[tuple[str, str], str] = {}
        self._results: dict[tuple[str, str], LastResult] = {}
        self._events: dict[str, list[Event]] = {}

    async def create_job(self, job: Job) -> tuple[Job, bool]:
        active_id = self._active.get((job.project_id, job.agent))
        if active_id is not None:
            return self._jobs[active_id], True
        self._jobs[job.job_id] = job
        self._active[(job.project_id, job.agent)] = job.job_id
        self._append(job)
        return job, False

    async def update_job(self, job: Job, expected: JobStatus) -> Event:
        stored = self._jobs.get(job.job_id)
        if stored is None or stored.status is not expected:
            raise StaleJob(job.job_id, expected.value)
        self._jobs[job.job_id] = job
        key = (job.project_id, job.agent)
        if job.status.is_final:
            self._active.pop(key, None)
        if job.status is JobStatus.COMPLETED and job.result is not None:
            self._results[key] = LastResult(job_id=job.job_id, result=job.result, at=job.updated_at)
        return self._append(job)

    async def set_progress(self, job_id: str, progress: Progress) -> None:
        stored = self._jobs.get(job_id)
        if stored is not None and stored.status is JobStatus.RUNNING:
            self._jobs[job_id] = dataclasses.replace(stored, progress=progress)

    async def get_job(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    async def latest_job(self, project_id: str, agent: str) -> Job | None:
        return self._latest(project_id, agent)

    def _latest(self, project_id: str, agent: str) -> Job | None:
        active_id = self._active.get((project_id, agent))
        if active_id is not None:
            return self._jobs[active_id]
        jobs = self._list(project_id, agent, 1)
        return jobs[0] if jobs else None

    async def list_jobs(self, project_id: str, agent: str | None, limit: int) -> list[Job]:
        return self._list(project_id, agent, limit)

    def _list(self, project_id: str, agent: str | None, limit: int) -> list[Job]:
        matching = [
            job for job in self._jobs.values() if job.project_id == project_id and (agent is None or job.agent == agent)
        ]
        return newest_first(matching, limit)

    async def last_results(self, project_id: str) -> dict[str, LastResult]:
        return self._results_of(project_id)

    def _results_of(self, project_id: str) -> dict[str, LastResult]:
        return {agent: last for (project, agent), last in self._results.items() if project == project_id}

    async def snapshot(self, project_id: str, agents: Sequence[str]) -> ProjectState:
        # No await between the reads, so nothing can change in between.
        return ProjectState(
            seq=self._last_seq(project_id),
            jobs={agent: self._latest(project_id, agent) for agent in agents},
            results=self._results_of(project_id),
        )

    async def active_jobs(self) -> list[Job]:
        return [self._jobs[job_id] for job_id in self._active.values()]

    async def project_ids(self) -> list[str]:
        def newest(project_id: str) -> float:
            return self._events[project_id][-1].job.updated_at

        return sorted(self._events, key=newest, reverse=True)

    async def last_seq(self, project_id: str) -> int:
        return self._last_seq(project_id)

    def _last_seq(self, project_id: str) -> int:
        events = self._events.get(project_id)
        return events[-1].seq if events else 0

    async def events_after(self, project_id: str, after: int, limit: int) -> list[Event]:
        events = self._events.get(project_id, [])
        # seqs are 1..n with no holes, so the position of seq s is s - 1
        start = max(after, 0)
        return events[start : start + limit]

    def _append(self, job: Job) -> Event:
        log = self._events.setdefault(job.project_id, [])
        event = Event(epoch=self.epoch, seq=len(log) + 1, job=job)
        log.append(event)
        self._notify(job.project_id)
        return event
