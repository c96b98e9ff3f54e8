"""``memory://``: everything in this process, gone at exit. For throwaway use and tests."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence

from ..errors import QueueFull, StaleJob
from ..jobs import Event, Job, JobStatus, LastResult, OutputChunk, Progress, ProjectState
from ..scheduling import IfActive, QueueState, decide_start
from .base import ActiveJobs, JobQuery, Store, duration_of, newest_first


class MemoryStore(Store):
    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.epoch = uuid.uuid4().hex[:12]
        self._jobs: dict[str, Job] = {}
        self._active = ActiveJobs()
        self._results: dict[tuple[str, str], LastResult] = {}
        self._events: dict[str, list[Event]] = {}
        self._outputs: dict[str, tuple[int, str]] = {}

    async def create_job(
        self, job: Job, if_active: IfActive = IfActive.ATTACH, max_queued: int = 0
    ) -> tuple[Job, bool]:
        # No await until the end: the decision and its writes are one step.
        decision = decide_start(self._active.of(job.project_id, job.agent), job, if_active)
        if decision.insert is None:
            return decision.job, True
        if max_queued and self._active.queued_count() - len(decision.cancel) >= max_queued:
            raise QueueFull(max_queued)
        for record in (*decision.cancel, *([decision.stop] if decision.stop else [])):
            self._write(record)
        self._write(decision.insert)
        self._queue_changed()
        return decision.job, False

    async def queue_state(self) -> QueueState:
        return self._active.state()

    async def update_job(self, job: Job, expected: JobStatus) -> Event:
        stored = self._jobs.get(job.job_id)
        if stored is None or stored.status is not expected:
            raise StaleJob(job.job_id, expected.value)
        event = self._write(job)
        if job.status is not expected:
            self._queue_changed()
        return event

    def _write(self, job: Job) -> Event:
        self._jobs[job.job_id] = job
        if job.status.is_final:
            self._outputs.pop(job.job_id, None)  # the final record holds it
        self._active.apply(job)
        if job.status is JobStatus.COMPLETED and job.result is not None:
            key = (job.project_id, job.agent)
            self._results[key] = LastResult(job_id=job.job_id, result=job.result, at=job.updated_at)
        return self._append(job)

    async def set_progress(self, job_id: str, progress: Progress) -> None:
        stored = self._jobs.get(job_id)
        if stored is not None and stored.status is JobStatus.RUNNING:
            self._jobs[job_id] = dataclasses.replace(stored, progress=progress)

    async def append_output(self, chunk: OutputChunk) -> None:
        attempt, text = self._outputs.get(chunk.job_id, (chunk.attempt, ""))
        if attempt != chunk.attempt:
            text = ""
        if chunk.offset == len(text):
            self._outputs[chunk.job_id] = (chunk.attempt, text + chunk.text)

    async def get_output(self, job_id: str) -> tuple[int, str] | None:
        return self._outputs.get(job_id)

    async def get_job(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    async def latest_job(self, project_id: str, agent: str) -> Job | None:
        return self._latest(project_id, agent)

    def _latest(self, project_id: str, agent: str) -> Job | None:
        active = self._active.of(project_id, agent)
        if active:
            return active[-1]
        jobs = self._list(project_id, agent, 1)
        return jobs[0] if jobs else None

    async def durations(self, agent: str, project_id: str | None, limit: int) -> list[float]:
        done = [
            job
            for job in self._jobs.values()
            if job.agent == agent and job.status is JobStatus.COMPLETED and project_id in (None, job.project_id)
        ]
        found = (duration_of(job) for job in sorted(done, key=lambda job: job.finished_at or 0, reverse=True))
        return [value for value in found if value is not None][:limit]

    async def list_jobs(self, project_id: str, agent: str | None, limit: int) -> list[Job]:
        return self._list(project_id, agent, limit)

    def _list(self, project_id: str, agent: str | None, limit: int) -> list[Job]:
        matching = [
            job for job in self._jobs.values() if job.project_id == project_id and (agent is None or job.agent == agent)
        ]
        return newest_first(matching, limit)

    async def find_jobs(self, query: JobQuery) -> list[Job]:
        return query.page(self._jobs.values())

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
        return self._active.jobs()

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
