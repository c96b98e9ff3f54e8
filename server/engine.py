"""The job engine: single flight, the scheduler's loop, worker slots, timeouts, cancellation.

Agent code is the only thing that runs in threads. Everything here runs on the event
loop; every change to a job goes through the store's compare-and-set, so a job that
timed out or was cancelled can never be finished a second time by a late thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import TaskGroup

from jobcast.agents import Agent, Retry, Transient

from . import logs
from .backoff import Backoff
from .context import RunContext
from .errors import NothingToCancel, StaleJob, StoreUnavailable, UnknownAgent
from .estimates import Estimates
from .jobs import Job, JobError, JobStatus, OutputChunk, Progress, ProgressUpdate, now
from .metrics import Metrics
from .plugins import agent_retry, agent_timeout, attempts_for, is_idempotent
from .scheduling import Caps, IfActive, Place, Priority, places
from .settings import Settings
from .store import Store

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: At most this many progress events (and store writes) per second per job.
PROGRESS_WRITES_PER_SECOND = 10


class ProgressSink(Protocol):
    """Where live progress goes (the hub); progress never enters the event log."""

    def publish_progress(self, update: ProgressUpdate) -> None: ...

    def job_ended(self, project_id: str, job_id: str) -> None: ...

    def queue_changed(self) -> None:
        """A job was queued, started or ended somewhere: places in the queue may have moved."""

    def publish_output(self, chunk: OutputChunk) -> None:
        """Text a running job streamed, already in the store: every watcher must get all of it."""


class _NoSink:
    def publish_progress(self, update: ProgressUpdate) -> None:
        pass

    def job_ended(self, project_id: str, job_id: str) -> None:
        pass

    def queue_changed(self) -> None:
        pass

    def publish_output(self, chunk: OutputChunk) -> None:
        pass


#: How often a running job's streamed output is taken from its agent, stored and sent: one message per window.
OUTPUT_WINDOW = 0.05


def caps_for(settings: Settings, agents: Mapping[str, Agent]) -> Caps:
    """The limits on running jobs: the settings', and each agent's ``max_running``."""
    per_agent = {name: int(getattr(agent, "max_running", 0) or 0) for name, agent in agents.items()}
    return Caps(
        per_project=settings.max_running_per_project,
        per_user=settings.max_running_per_user,
        per_agent={name: cap for name, cap in per_agent.items() if cap},
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outcome:
    """What came back from the worker thread."""

    result: dict[str, Any] | None = None
    error: JobError | None = None
    #: the agent stopped (raised) after the job was cancelled
    cancelled: bool = False
    #: the agent raised Transient: worth another attempt, if its policy allows
    transient: bool = False
    retry_after: float | None = None


@dataclasses.dataclass(kw_only=True)
class _Run:
    """A job this process is running: its context and its latest, unflushed progress."""

    job: Job
    seq: int
    ctx: RunContext
    progress: Progress
    progress_changed: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    #: set once the engine has decided the final state; no progress follows it
    final: bool = False
    #: set when a cancel reaches the running agent: the grace for it to stop starts
    stopping: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    #: the output stored and sent so far (its length is the next chunk's offset), and what awaits the store
    output: list[str] = dataclasses.field(default_factory=list)
    output_length: int = 0
    output_bytes: int = 0
    output_pending: str = ""
    output_truncated: bool = False
    output_lock: anyio.Lock = dataclasses.field(default_factory=anyio.Lock)

    def stop(self) -> None:
        self.ctx.cancel()
        self.stopping.set()

    def update(self) -> ProgressUpdate:
        assert self.job.started_at is not None
        return ProgressUpdate(
            project_id=self.job.project_id,
            agent=self.job.agent,
            job_id=self.job.job_id,
            seq=self.seq,
            started_at=self.job.started_at,
            percent=self.progress.percent,
            message=self.progress.message,
            expected_s=self.job.expected_s,
            overdue_after_s=self.job.overdue_after_s,
        )


class Engine:
    """Queues jobs, starts them on this process's free threads in the scheduler's order, and supervises them.

    The queue lives in the store, so with a shared store every process (``jobcast serve``
    and ``jobcast worker``) takes the next job the rules of :mod:`.scheduling` allow.
    """

    def __init__(
        self,
        store: Store,
        agents: Mapping[str, Agent],
        settings: Settings,
        task_group: TaskGroup,
        progress_sink: ProgressSink | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics or Metrics()
        self._sink: ProgressSink = progress_sink or _NoSink()
        self.agents = agents
        #: threads, max_queued, job_timeout, demo_seconds, progress_interval and the limits are the engine's
        self.settings = settings
        self.caps = caps_for(settings, agents)
        self.estimates = Estimates(store)
        #: where a job ran, on its record
        self.runner = {"host": socket.gethostname(), "pid": os.getpid()}
        self._task_group = task_group
        # A slot is held from "running" until the thread really returns, even after a
        # timeout, so --threads is a true bound on agent threads.
        self._free_slots = settings.threads
        self._threads = anyio.CapacityLimiter(max(settings.threads, 1))
        self._runs: dict[str, _Run] = {}
        #: running jobs this process started and has not finished; it holds their leases
        self._owned: set[str] = set()
        #: set at shutdown: no job starts, and writes waiting for the store stop waiting
        self._stopping = anyio.Event()
        #: set when the process stops taking jobs (a worker's SIGTERM), before it stops
        self._draining = anyio.Event()
        self._run_ended = anyio.Event()
        self._wake = anyio.Event()
        #: jobs whose cancel came between their start in the store and their run here (embedded stores;
        #: with a shared one the lease round tells)
        self._cancel_on_start: set[str] = set()

    # -- what the API calls ----------------------------------------------------

    def agent(self, name: str) -> Agent:
        try:
            return self.agents[name]
        except KeyError:
            raise UnknownAgent(name) from None

    def timeout_for(self, agent: Agent) -> float:
        return agent_timeout(agent, self.settings.job_timeout)

    @property
    def busy_threads(self) -> int:
        return self.settings.threads - self._free_slots

    async def start(
        self,
        project_id: str,
        agent_name: str,
        *,
        priority: Priority = Priority.NORMAL,
        if_active: IfActive = IfActive.ATTACH,
        started_by: str | None = None,
        requester: str = "",
    ) -> tuple[Job, bool]:
        """Queue a job, or return the active one (``if_active``: see :func:`~server.scheduling.decide_start`)."""
        agent = self.agent(agent_name)
        new = Job.new(
            project_id,
            agent_name,
            priority=priority.value,
            started_by=started_by,
            requester=requester,
            max_attempts=attempts_for(agent),
        )
        job, deduplicated = await self.store.create_job(new, if_active, self.settings.max_queued)
        if not deduplicated and if_active is IfActive.REPLACE:
            for (
                run
            ) in self._runs.values():  # the store recorded the cancel; stop ours without waiting for a lease round
                if (run.job.project_id, run.job.agent) == (project_id, agent_name) and run.job.job_id != job.job_id:
                    run.stop()
        self._wake.set()
        return job, deduplicated

    async def cancel(self, project_id: str, agent_name: str) -> tuple[Job, bool]:
        """Cancel a queued or retrying job at once; ask a running one to stop (it is ended ``cancelled``
        after ``--cancel-grace`` if it does not). Returns the job, and whether it was cancelled already:
        cancel is idempotent."""
        self.agent(agent_name)
        while True:
            job = await self.store.latest_job(project_id, agent_name)
            if job is not None and job.status is JobStatus.CANCELLED:
                return job, True
            if job is None or job.status.is_final:
                raise NothingToCancel(project_id, agent_name)
            if job.cancel_requested:
                return job, True
            try:
                return await self._cancel(job), False
            except StaleJob:
                continue  # it started or finished meanwhile; look again

    async def _cancel(self, job: Job) -> Job:
        if job.status in (JobStatus.QUEUED, JobStatus.RETRYING):
            why = "cancelled before it started" if job.status is JobStatus.QUEUED else "cancelled while retrying"
            cancelled = job.with_cancel_requested().transition(
                JobStatus.CANCELLED, error=JobError(code="cancelled", message=why)
            )
            return (await self.store.update_job(cancelled, job.status)).job
        # Record the request before waking the agent, so the job's final record carries it.
        requested = await self.store.update_job(job.with_cancel_requested(), JobStatus.RUNNING)
        run = self._runs.get(job.job_id)
        if run is not None:
            run.seq = requested.seq
            run.stop()
        elif not self.store.shared:
            self._cancel_on_start.add(job.job_id)  # started a moment ago; its run is not registered yet
        return requested.job

    async def places(self) -> dict[str, Place]:
        """Where each queued job stands, by job id."""
        state = await self.store.queue_state()
        return {place.job_id: place for place in places(state, self.caps)}

    async def with_place(self, job: Job) -> dict[str, Any]:
        """A job's public record: with its place in the queue if it waits, its output so far if it runs."""
        waiting = job.status in (JobStatus.QUEUED, JobStatus.RETRYING)
        place = (await self.places()).get(job.job_id) if waiting else None
        if job.status is JobStatus.RUNNING:  # the output so far, kept apart from the record while it runs
            output = await self.store.get_output(job.job_id)
            if output is not None and output[0] == job.attempt:
                job = job.with_output(output[1], False)
        return job.to_dict(queue=None if place is None else place.to_dict())

    # -- scheduling -------------------------------------------------------------------

    async def schedule(self) -> None:
        """For the life of the app: start queued jobs on free threads, and tell the sink the queue moved.

        Woken by this process's starts and ends and by every change to the shared queue;
        a shared store is also looked at every second, in case a wake-up was lost.
        """
        self._task_group.start_soon(self._watch_queue, name="queue watch")
        self._wake.set()  # jobs already queued (before a restart, or by other processes) start now
        failing = False
        while not self._stopping.is_set():
            with anyio.move_on_after(self._next_look()):
                await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self._fill_threads()
                failing = False
            except StoreUnavailable:
                await anyio.sleep(0.5)  # the store logged it; try again
                self._wake.set()
            except Exception:
                if not failing:
                    logger.exception("the scheduler failed to start a job; retrying")
                failing = True
                await anyio.sleep(1.0)
                self._wake.set()
            self._sink.queue_changed()

    def _next_look(self) -> float:
        """How long the scheduler may sleep without a wake-up: until the next retry is due, and on a
        shared store at most a second."""
        wait = 1.0 if self.store.shared else math.inf
        if self.store.next_retry_at is not None:
            wait = min(wait, max(0.0, self.store.next_retry_at - now()) + 0.001)
        return wait

    async def _watch_queue(self) -> None:
        backoff = Backoff()
        while True:
            try:
                cancelled = await self.store.wait_for_queue_change(30.0)
                backoff.reset()
            except StoreUnavailable:
                await backoff.sleep()
                cancelled = set()
            for job_id in cancelled:
                run = self._runs.get(job_id)
                if run is not None and not run.stopping.is_set():
                    logger.info("job %s: its cancel was asked through another process; stopping it", job_id,
                                extra=job_log(run.job))  # fmt: skip
                    run.stop()
            self._wake.set()

    async def _with_estimate(self, running: Job) -> Job:
        found = await self.estimates.for_job(running.agent, running.project_id)
        return running.with_estimate(found.expected_s, found.overdue_after_s)

    async def _fill_threads(self) -> None:
        while self._free_slots > 0 and not (self._stopping.is_set() or self._draining.is_set()):
            began = await self.store.start_next(self.caps, self.runner, self.agents.keys(), self._with_estimate)
            if began is None:
                return
            self._free_slots -= 1
            job = began.job
            self._owned.add(job.job_id)
            run = _Run(job=job, seq=began.seq, ctx=self._context(job), progress=job.progress)
            self._runs[job.job_id] = run  # at once: a cancel from now on finds it
            if job.job_id in self._cancel_on_start:
                self._cancel_on_start.discard(job.job_id)
                run.stop()
            logger.info("job %s started: %s/%s, attempt %d of %d", job.job_id, job.project_id, job.agent,
                        job.attempt, job.max_attempts, extra=job_log(job))  # fmt: skip
            self.metrics.job_started(job.agent)
            self._task_group.start_soon(self._run_guarded, run, name=f"job {job.job_id}")

    # -- lifecycle -----------------------------------------------------------------

    async def recover(self, reason: str) -> int:
        """End every job left running by a process that is gone: ``interrupted``, or requeued as its next
        attempt when its agent is idempotent and attempts remain. Queued jobs wait on, for any thread.

        With a shared store that means running jobs whose lease expired; with an embedded one,
        every running job this process does not run.
        """
        ended: list[JobStatus] = []
        for job in await self.store.orphaned_jobs():
            if job.job_id not in self._owned and (status := await self._interrupt(job, reason)) is not None:
                ended.append(status)
        failed = ended.count(JobStatus.FAILED)
        if failed:
            logger.warning("marked %d interrupted job(s) as failed: %s", failed, reason)
        if len(ended) > failed:
            self._wake.set()
        return len(ended)

    async def keep_leases(self) -> None:
        """For a shared store: renew this process's leases and end other processes' orphans.

        Runs for the life of the app. It also hears of cancels asked through another
        process, and notices a Redis restart (a new epoch) even when nothing else is going on.
        """
        tick = min(1.0, self.store.lease_seconds / 3)
        failing = False
        while True:
            try:
                await self._lease_round()
                failing = False
            except StoreUnavailable:
                pass  # the store logged it once; the next round retries
            except Exception:
                # Never let one bad round end the loop: without it, this process's leases lapse.
                if not failing:
                    logger.exception("a lease round failed; retrying every %g s", tick)
                failing = True
            await anyio.sleep(tick)

    async def _lease_round(self) -> None:
        await self.store.check_epoch()
        report = await self.store.renew_leases(sorted(self._owned))
        for job_id in report.lost | report.cancel_requested:
            run = self._runs.get(job_id)
            if run is not None:
                run.stop()  # a lost job's outcome is discarded by the compare-and-set anyway
        await self.recover("the process running the job stopped renewing its lease")

    async def drain(self, grace: float) -> None:
        """Take no more jobs and wait up to ``grace`` seconds for the running ones to finish."""
        self._draining.set()
        with anyio.move_on_after(grace):
            while self._runs:
                self._run_ended = anyio.Event()
                await self._run_ended.wait()

    async def shutdown(self) -> None:
        """Stop taking work: end (or requeue) what cannot finish now, then tell the running agents to stop.

        The store is written first, so an agent that stops at once cannot make its job ``cancelled``.
        """
        self._stopping.set()
        try:
            for job_id in sorted(self._owned):
                job = await self.store.get_job(job_id)
                if job is not None and job.status is JobStatus.RUNNING:
                    await self._interrupt(job, "the server shut down before the job finished")
        except StoreUnavailable:
            logger.warning("the store is unavailable at shutdown; %s", self._who_ends_unsaved_jobs())
        finally:
            for run in self._runs.values():
                run.ctx.cancel()

    def _who_ends_unsaved_jobs(self) -> str:
        if self.store.shared:
            return "another process ends this process's jobs as interrupted once their leases expire"
        return "this process's unfinished jobs are marked interrupted when jobcast next starts"

    async def _interrupt(self, job: Job, reason: str) -> JobStatus | None:
        """End a job its process lost as ``interrupted``, or requeue it as its next attempt if its agent
        is idempotent and it has attempts left. Returns the status it wrote (None: someone else ended it)."""
        error = JobError(code="interrupted", message=reason)
        agent = self.agents.get(job.agent)
        if job.status is JobStatus.RUNNING and job.cancel_requested:
            # Its cancel was asked for: never bring it back; it stopped, one way or the other.
            stopped = JobError(code="cancelled", message=f"cancelled on request; then {reason}")
            ended = job.transition(JobStatus.CANCELLED, error=stopped)
        elif job.status is JobStatus.RUNNING and agent is not None and is_idempotent(agent) and job.attempts_left > 0:
            ended = job.transition(JobStatus.QUEUED, error=error)
            logger.warning("job %s of %s/%s requeued as attempt %d: %s", job.job_id, job.project_id, job.agent,
                           ended.attempt, reason, extra=job_log(ended))  # fmt: skip
        else:
            ended = job.transition(JobStatus.FAILED, error=error)
        try:
            await self.store.update_job(ended, job.status)
        except StaleJob:
            return None
        if ended.status.is_final:
            self._count_outcome(ended)
        return ended.status

    # -- running a job ---------------------------------------------------------------

    async def _run_guarded(self, run: _Run) -> None:
        """A job's task. A bug here must not take the task group, and the server, down."""
        job = run.job
        try:
            await self._run(run, self.agents[job.agent])
        except StoreUnavailable:
            logger.warning(
                "job %s of %s/%s could not be saved: %s",
                job.job_id,
                job.project_id,
                job.agent,
                self._who_ends_unsaved_jobs(),
                extra=job_log(job),
            )
        except Exception:
            logger.exception("job %s of %s/%s crashed in the engine", job.job_id, job.project_id, job.agent,
                             extra=job_log(job))  # fmt: skip
            await self._fail_after_crash(job.job_id)
        finally:
            self._owned.discard(job.job_id)
            self._free_slots += 1
            self._wake.set()
            self._run_ended.set()

    async def _run(self, run: _Run, agent: Agent) -> None:
        try:
            outcome = await self._supervise(run, agent)
            await self._finish(run, outcome)
        finally:
            del self._runs[run.job.job_id]
            self._sink.job_ended(run.job.project_id, run.job.job_id)

    async def _until_saved(self, write: Callable[..., Awaitable[T]], *args: Any) -> T:
        """A write the job cannot go on without, retried while the store is down (a full disk, Redis away).

        With a shared store this gives up after a lease, when another process may end the
        job anyway. An embedded store has no one else to end it, so the write waits for
        the store to recover (the job keeps its slot meanwhile), until shutdown.
        """
        give_up = self.store.lease_seconds if self.store.shared else math.inf
        return await retry_while_unavailable(write, *args, give_up=give_up, stop=self._stopping)

    def _context(self, job: Job) -> RunContext:
        return RunContext(
            demo_seconds=self.settings.demo_seconds,
            on_report=lambda progress: self._on_report(job.job_id, progress),
            token=anyio.lowlevel.current_token(),
        )

    async def _supervise(self, run: _Run, agent: Agent) -> Outcome:
        async with anyio.create_task_group() as helpers:
            helpers.start_soon(self._expire_after, run, agent)
            helpers.start_soon(self._end_after_cancel_grace, run)
            helpers.start_soon(self._pump_progress, run)
            helpers.start_soon(self._pump_output, run)
            outcome = await anyio.to_thread.run_sync(
                call_agent, agent, run.job, run.ctx, limiter=self._threads, abandon_on_cancel=True
            )
            helpers.cancel_scope.cancel()
        return outcome

    async def _expire_after(self, run: _Run, agent: Agent) -> None:
        timeout = self.timeout_for(agent)
        await anyio.sleep(timeout)
        run.ctx.cancel()
        error = JobError(code="timed_out", message=f"the job did not finish within its {timeout:g} s limit")
        retry = agent_retry(agent)
        try:
            if retry is not None and retry.on_timeout and run.job.attempts_left > 0:
                await self._conclude(run, JobStatus.RETRYING, error=error, retry_at=self._retry_at(run, retry, None))
            else:
                await self._conclude(run, JobStatus.TIMED_OUT, error=error)
        except StoreUnavailable:
            # Not raised into the job's helpers: that would cancel the wait for the thread and free its slot.
            logger.warning("job %s timed out but could not be saved: %s", run.job.job_id, self._who_ends_unsaved_jobs(),
                           extra=job_log(run.job))  # fmt: skip

    async def _end_after_cancel_grace(self, run: _Run) -> None:
        """An agent that ignores a cancel for ``--cancel-grace`` seconds is ended ``cancelled`` anyway;
        its thread keeps its slot until it returns, and its late result is discarded."""
        await run.stopping.wait()
        await anyio.sleep(self.settings.cancel_grace)
        message = f"the agent did not stop within {self.settings.cancel_grace:g} s of the cancel; ended anyway"
        try:
            await self._conclude(run, JobStatus.CANCELLED, error=JobError(code="cancelled", message=message))
        except StoreUnavailable:
            logger.warning("job %s was cancelled but could not be saved: %s", run.job.job_id,
                           self._who_ends_unsaved_jobs(), extra=job_log(run.job))  # fmt: skip

    async def _finish(self, run: _Run, outcome: Outcome) -> None:
        # An agent that returned a result finished before it noticed a cancel: keep the result.
        if run.final:
            return  # timed out, or ended after the cancel grace, while the thread still ran
        retry = agent_retry(self.agents[run.job.agent])
        if outcome.cancelled:
            error = JobError(code="cancelled", message="cancelled on request")
            await self._conclude(run, JobStatus.CANCELLED, error=error)
        elif outcome.transient and retry is not None and run.job.attempts_left > 0 and outcome.error is not None:
            retry_at = self._retry_at(run, retry, outcome.retry_after)
            await self._conclude(run, JobStatus.RETRYING, error=outcome.error, retry_at=retry_at)
        elif outcome.error is not None:
            await self._conclude(run, JobStatus.FAILED, error=outcome.error)
        else:
            await self._conclude(run, JobStatus.COMPLETED, result=outcome.result)
            self.estimates.forget(run.job.agent, run.job.project_id)

    def _retry_at(self, run: _Run, retry: Retry, retry_after: float | None) -> float:
        """``max(retry_after, uniform(0, backoff * 2**(attempt-1)))``, the random part capped at ``max_backoff``."""
        backoff = min(retry.max_backoff, retry.backoff * 2 ** (run.job.attempt - 1))
        wait = max(retry_after or 0.0, random.uniform(0, backoff))
        return now() + wait

    async def _conclude(
        self,
        run: _Run,
        status: JobStatus,
        *,
        result: dict[str, Any] | None = None,
        error: JobError | None = None,
        retry_at: float | None = None,
    ) -> None:
        """Write how the attempt ended, once: a final state, or ``retrying``. A job already final
        (timed out, lost) or on another attempt stays as it is."""
        if run.final:
            return
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(StoreUnavailable):  # what could not be stored stays in the final record
                await self._flush_output(run)
            run.final = True
            self._sink.job_ended(run.job.project_id, run.job.job_id)
            await self._until_saved(self._write_final, run, status, result, error, retry_at)

    async def _write_final(
        self,
        run: _Run,
        status: JobStatus,
        result: dict[str, Any] | None,
        error: JobError | None,
        retry_at: float | None = None,
    ) -> None:
        current = await self.store.get_job(run.job.job_id)
        if current is None:
            logger.warning("job %s is gone from the store; discarding its %s outcome", run.job.job_id, status.value,
                           extra=job_log(run.job))  # fmt: skip
            return
        if current.status is not JobStatus.RUNNING or current.attempt != run.job.attempt:
            logger.info(
                "job %s is already %s; discarding its %s outcome",
                run.job.job_id,
                current.status.value,
                status.value,
                extra=job_log(run.job),
            )
            return
        final = current.with_progress(run.progress).transition(status, result=result, error=error, retry_at=retry_at)
        if status.is_final:
            text = "".join(run.output) + run.output_pending  # all of it, stored on the way or not
            final = final.with_output(text or None, run.output_truncated)
        try:
            await self.store.update_job(final, JobStatus.RUNNING)
        except StaleJob:
            logger.info("job %s finished elsewhere first; discarding its %s outcome", run.job.job_id, status.value,
                        extra=job_log(run.job))  # fmt: skip
            return
        _log_outcome(final)
        self._count_outcome(final)

    def _count_outcome(self, job: Job) -> None:
        """The metrics of an attempt that ended: a retry, or a final status with how long it ran."""
        if job.status is JobStatus.RETRYING:
            self.metrics.job_retrying(job.agent)
            return
        ran = job.finished_at - job.started_at if job.finished_at and job.started_at else None
        self.metrics.job_finished(job.agent, job.status.value, ran)

    async def _fail_after_crash(self, job_id: str) -> None:
        with anyio.CancelScope(shield=True):
            try:
                job = await self.store.get_job(job_id)
                if job is not None and job.status.is_active:
                    await self._interrupt(job, "jobcast hit an internal error running this job")
            except Exception:
                logger.exception("could not mark job %s as failed", job_id, extra={"job_id": job_id})

    # -- output ------------------------------------------------------------------------

    async def _pump_output(self, run: _Run) -> None:
        """Take what the agent streamed every window: thousands of ``ctx.stream`` calls make one message."""
        while not run.final:
            await anyio.sleep(OUTPUT_WINDOW)
            await self._flush_output(run)

    async def _flush_output(self, run: _Run) -> None:
        """Store what the agent streamed, then send it. A store that is down keeps it here for the next try,
        so nothing is lost or sent twice; past ``--max-output-bytes`` the rest is cut (and the agent never knows)."""
        async with run.output_lock:
            if run.final and not run.output_pending and not run.ctx.has_output:
                return
            run.output_pending += self._within_budget(run, run.ctx.take_output())
            if not run.output_pending:
                return
            job = run.job
            chunk = OutputChunk(project_id=job.project_id, agent=job.agent, job_id=job.job_id, attempt=job.attempt,
                                offset=run.output_length, text=run.output_pending)  # fmt: skip
            try:
                await self.store.append_output(chunk)
            except StoreUnavailable:
                return  # kept in output_pending; the next window tries again
            run.output.append(chunk.text)
            run.output_length = chunk.end
            run.output_pending = ""
            if self.store.shared:
                # Through the store, awaited, so it reaches every process before the job's final transition;
                # a piece that does not is sent from the final record just before it (the channel's tail).
                with contextlib.suppress(StoreUnavailable):
                    await self.store.publish_output(chunk)
            else:
                self._sink.publish_output(chunk)

    def _within_budget(self, run: _Run, text: str) -> str:
        if not text or run.output_truncated:
            return ""
        encoded = text.encode()
        room = self.settings.max_output_bytes - run.output_bytes
        if len(encoded) > room:
            text = encoded[: max(room, 0)].decode(errors="ignore")  # never half a character
            run.output_truncated = True
            logger.warning("job %s passed --max-output-bytes %d; the rest of its output is cut",
                           run.job.job_id, self.settings.max_output_bytes, extra=job_log(run.job))  # fmt: skip
            encoded = text.encode()
        run.output_bytes += len(encoded)
        return text

    # -- progress ----------------------------------------------------------------------

    def _on_report(self, job_id: str, progress: Progress) -> None:
        """Runs on the loop, called by ``ctx.report`` from the worker thread."""
        run = self._runs.get(job_id)
        if run is None:
            return
        run.progress = Progress(
            percent=run.progress.percent if progress.percent is None else progress.percent,
            message=run.progress.message if progress.message is None else progress.message,
        )
        run.progress_changed.set()

    async def _pump_progress(self, run: _Run) -> None:
        """One timer per running job: publish on each report (at most 10 a second) and every interval."""
        written = run.progress
        spacing = 1 / PROGRESS_WRITES_PER_SECOND
        next_at = anyio.current_time()
        while not run.final:
            with anyio.move_on_after(self.settings.progress_interval):
                await run.progress_changed.wait()
            run.progress_changed = anyio.Event()
            if run.final:
                return
            self._sink.publish_progress(run.update())
            if run.progress != written:
                written = run.progress
                with contextlib.suppress(StoreUnavailable):  # progress is latest-value; the next write catches up
                    await self.store.set_progress(run.job.job_id, written)
            next_at = next_publish_at(next_at, anyio.current_time(), spacing)
            await anyio.sleep_until(next_at)


def next_publish_at(previous: float, now: float, spacing: float) -> float:
    """When a job's progress may next be published: on a grid of ``spacing`` from the previous slot, so a
    wake-up that a busy loop makes late shortens the next wait rather than lowering the rate (a job that
    reports all the time is heard ten times a second); a slot already missed starts the grid again."""
    slot = previous + spacing
    return slot if slot > now else now + spacing


async def retry_while_unavailable(
    function: Callable[..., Awaitable[T]], *args: Any, give_up: float, stop: anyio.Event | None = None
) -> T:
    """Call ``function`` until the store answers, with :class:`Backoff`, for at most ``give_up`` seconds.

    Raises the last StoreUnavailable once ``give_up`` has passed or ``stop`` is set.
    """
    backoff = Backoff()
    deadline = anyio.current_time() + give_up
    while True:
        try:
            return await function(*args)
        except StoreUnavailable:
            delay = backoff.next_delay()
            if anyio.current_time() + delay > deadline or (stop is not None and stop.is_set()):
                raise
            with anyio.move_on_after(delay):
                await (stop or anyio.Event()).wait()


def _log_outcome(job: Job) -> None:
    """One line for how an attempt ended: completed, failed, cancelled, timed out, or retrying."""
    took = f"{job.finished_at - job.started_at:.1f} s" if job.finished_at and job.started_at else "no run"
    if job.status is JobStatus.COMPLETED:
        logger.info("job %s completed: %s/%s in %s", job.job_id, job.project_id, job.agent, took, extra=job_log(job))
        return
    error = job.error or JobError(code="unknown", message="")
    if job.status is JobStatus.RETRYING:
        wait = max(0.0, (job.retry_at or now()) - now())
        logger.warning("job %s attempt %d failed (%s: %s); retrying in %.1f s", job.job_id, job.attempt - 1,
                       error.code, error.message, wait, extra={**job_log(job), "attempt": job.attempt - 1})  # fmt: skip
        return
    logger.warning("job %s %s: %s/%s after %s (%s: %s)", job.job_id, job.status.value, job.project_id, job.agent,
                   took, error.code, error.message, extra=job_log(job))  # fmt: skip


def job_log(job: Job) -> dict[str, Any]:
    """The ``extra=`` of a line about ``job``: its ids, as keys of a JSON line."""
    return logs.job_fields(job.job_id, job.project_id, job.agent, job.attempt)


def call_agent(agent: Agent, job: Job, ctx: RunContext) -> Outcome:
    """Runs in the worker thread: call the agent and turn whatever happens into an Outcome."""
    project_id = job.project_id
    try:
        result = agent.refresh(project_id, ctx)
    except Transient as exc:
        if ctx.cancelled:
            return Outcome(cancelled=True)
        logger.warning("job %s: agent %r hit a transient failure for project %r: %s", job.job_id, agent.name,
                       project_id, exc.message, extra=job_log(job))  # fmt: skip
        error = JobError(code="transient_error", message=exc.message or "a transient failure")
        return Outcome(error=error, transient=True, retry_after=exc.retry_after)
    except Exception as exc:
        if ctx.cancelled:
            return Outcome(cancelled=True)
        logger.exception(
            "job %s: agent %r failed for project %r", job.job_id, agent.name, project_id, extra=job_log(job)
        )
        return Outcome(error=JobError(code="agent_error", message=str(exc) or type(exc).__name__))
    return checked_result(agent, result)


def checked_result(agent: Agent, result: object) -> Outcome:
    if not isinstance(result, dict):
        message = f"agent {agent.name!r} returned {type(result).__name__}, not a dict"
        return Outcome(error=JobError(code="invalid_result", message=message))
    try:
        # A round trip proves the result is JSON and detaches it from the agent's objects.
        return Outcome(result=json.loads(json.dumps(result, allow_nan=False)))
    except (TypeError, ValueError) as exc:
        message = f"agent {agent.name!r} returned a result that is not JSON-serialisable: {exc}"
        return Outcome(error=JobError(code="invalid_result", message=message))
