"""One project's fan-out in this process: its :class:`Channel`, and each subscriber's outgoing side.

The channel's reader follows the store's event log and pushes each event, encoded once,
into every subscriber's bounded queue without awaiting any socket. Progress is
latest-value: each subscriber keeps only the newest progress per job. A subscriber
whose queue of transitions overflows is ended, and its transport closes it; the client
resumes from its cursor and loses nothing. The hub (:mod:`.hub`) keeps the channels.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from collections.abc import Callable

import anyio

from .backoff import Backoff
from .errors import StoreUnavailable
from .jobs import Event, OutputChunk, ProgressUpdate
from .metrics import Counts
from .store import Store
from .uvicorn_ws import Framed
from .wire import FELL_BEHIND, Batch, Message, job_message, output_message, progress_message

#: Where a subscriber keeps the project's latest ``presence`` message among its latest-value news (no job has it).
PRESENCE_KEY = "presence"
#: Progress waits in its channel this long, so that every job's progress of that moment goes to each socket in
#: one write (one system call, not one per job); transitions and output never wait. Under load the wait grows to
#: PROGRESS_LOAD_FACTOR times what the last flush took, so progress takes at most about a fifth of the loop from
#: transitions, up to PROGRESS_BATCH_MAX_SECONDS: a flush to 5,000 sockets takes about 50 ms on 2 cores, and past
#: a tenth of a second a job's reports are coalesced to their newest (progress is latest-value).
PROGRESS_BATCH_SECONDS = 0.02
PROGRESS_LOAD_FACTOR = 4.0
PROGRESS_BATCH_MAX_SECONDS = 0.25
#: How many finished job ids a channel remembers, to drop progress that races a final state.
_FINISHED_MEMORY = 1024
_READ_BATCH = 500


class Subscriber:
    """One subscriber's outgoing side: direct writes while it keeps up, a bounded queue when not.

    While the subscriber is live, has nothing queued and its socket is below the
    high-water mark, a message goes straight to ``writer`` (no task, no await). Otherwise
    transitions queue, up to ``limit``, and progress keeps only its newest value per job;
    ``on_backlog`` asks the transport to start draining. Past the bound, ``overflowed`` is
    set and ``on_overflow`` asks the transport to close.
    """

    # One per connection, 10k at a time: slots, and events made only when someone waits.
    __slots__ = (
        "limit", "last_seq", "writer", "on_backlog", "on_overflow", "holding", "close_reason", "transport", "counts",
        "_transitions", "_progress", "_output", "_wake", "_overflowed",
    )  # fmt: skip

    def __init__(self, limit: int, transport: str = "websocket") -> None:
        self.limit = limit
        #: websocket, sse or longpoll; and where it counts what it coalesces and why it closed (/metrics)
        self.transport = transport
        self.counts: Counts | None = None
        self.last_seq = 0
        self.writer: Callable[[Framed], bool] | None = None
        self.on_backlog: Callable[[], object] | None = None
        self.on_overflow: Callable[[], object] | None = None
        #: true until the transport has sent the opening messages, and while it drains
        self.holding = True
        #: set when the subscriber must be closed: one of FELL_BEHIND, NEW_EPOCH, CHANNEL_FAILED
        self.close_reason: str | None = None
        # a list, not a deque: 56 bytes empty against 760, for each of 10k idle subscribers; it only fills for laggards
        self._transitions: list[tuple[int, Message]] = []
        self._progress: dict[str, tuple[int, Message]] = {}
        #: streamed output not yet written, per job: contiguous chunks merged into one, never dropped
        self._output: dict[str, OutputChunk] = {}
        self._wake: anyio.Event | None = None
        self._overflowed: anyio.Event | None = None

    @property
    def overflowed(self) -> anyio.Event:
        if self._overflowed is None:
            self._overflowed = anyio.Event()
        return self._overflowed

    def _set_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def push_event(self, seq: int, message: Message, job_id: str, final: bool) -> None:
        if seq <= self.last_seq or self._is_overflowed():
            return
        self.last_seq = seq
        if final:
            self._progress.pop(job_id, None)
            pending = self._output.pop(job_id, None)
            if pending is not None:  # the job's last output goes just before its end: nothing follows an end
                self._transitions.append((seq, output_message(pending)))
        if self._write_now(message):
            return
        if len(self._transitions) >= self.limit:
            self.end(FELL_BEHIND)
            return
        self._transitions.append((seq, message))
        self._backlogged()

    def push_events(self, events: list[tuple[int, Message, str, bool]], batch: Batch) -> None:
        """Several transitions in order (``batch`` frames them all): one write while the subscriber keeps up
        and has none of them yet, else each as :meth:`push_event` would."""
        if events[0][0] > self.last_seq and not self._is_overflowed() and self._write_now(batch):
            self.last_seq = events[-1][0]  # nothing was queued, so no progress or output waits on the finals
            return
        for seq, message, job_id, final in events:
            self.push_event(seq, message, job_id, final)

    def push_progress(self, job_id: str, seq: int, message: Message) -> None:
        # Progress about a transition this subscriber has not been given yet is dropped;
        # the job's next tick brings it once the transition is through.
        if seq > self.last_seq or self._is_overflowed() or self._write_now(message):
            return
        if job_id in self._progress and self.counts is not None:
            self.counts.add("jobcast_progress_coalesced")
        self._progress[job_id] = (seq, message)
        self._backlogged()

    def push_progress_batch(self, items: list[tuple[str, int, Message]], batch: Batch, newest_seq: int) -> None:
        """Several jobs' progress at once (``batch`` frames them all): one write while the subscriber keeps up,
        else each is queued, latest-value, as :meth:`push_progress` would."""
        if newest_seq <= self.last_seq and not self._is_overflowed() and self._write_now(batch):
            return
        for job_id, seq, message in items:
            self.push_progress(job_id, seq, message)

    def push_output(self, chunk: OutputChunk, message: Message) -> None:
        """Output is complete, not latest-value: a lagging subscriber gets it merged, never thinned."""
        if self._is_overflowed():
            return
        pending = self._output.get(chunk.job_id)
        if pending is None and self._write_now(message):
            return
        merged = None if pending is None else pending.followed_by(chunk)
        self._output[chunk.job_id] = chunk if merged is None else merged
        self._backlogged()

    def rebase_output(self, job_id: str, attempt: int, length: int) -> None:
        """The subscriber has the first ``length`` characters of the attempt's output (from its opening)."""
        pending = self._output.get(job_id)
        if pending is not None and pending.attempt == attempt:
            rest = pending.after(length)
            if rest is None:
                del self._output[job_id]
            else:
                self._output[job_id] = rest

    def _write_now(self, message: Framed) -> bool:
        if self.holding or self.writer is None or self._transitions or self._progress or self._output:
            return False
        return self.writer(message)

    def _is_overflowed(self) -> bool:
        return self._overflowed is not None and self._overflowed.is_set()

    def _backlogged(self) -> None:
        self._set_wake()
        if self.on_backlog is not None and not self.holding:
            self.holding = True  # the drainer owns the order until the queue is empty
            self.on_backlog()

    def end(self, reason: str) -> None:
        """Ask the transport to close this subscriber, saying why; the client resumes from its cursor."""
        self.close_reason = reason
        if reason == FELL_BEHIND and self.counts is not None:
            self.counts.add("jobcast_slow_consumer_closes", (self.transport,))
        self.overflowed.set()
        self._set_wake()
        if self.on_overflow is not None:
            self.on_overflow()

    def rebase(self, seq: int) -> None:
        """The subscriber already has everything up to ``seq`` (from a snapshot or replay)."""
        kept = 0
        while kept < len(self._transitions) and self._transitions[kept][0] <= seq:
            kept += 1
        del self._transitions[:kept]
        self.last_seq = max(self.last_seq, seq)

    def take_batch(self) -> list[Message]:
        """Everything queued: transitions first, in order, then the newest progress per job."""
        batch = [message for _, message in self._transitions]
        batch.extend(message for _, message in self._progress.values())
        batch.extend(output_message(chunk) for chunk in self._output.values())
        self._transitions.clear()
        self._progress.clear()
        self._output.clear()
        return batch

    async def next_batch(self) -> list[Message]:
        """Wait for something queued (for transports that drain in a loop, like SSE)."""
        while not (self._transitions or self._progress or self._output or self._is_overflowed()):
            self._wake = anyio.Event()
            await self._wake.wait()
        return self.take_batch()

    def release(self) -> None:
        """The transport has sent everything it took; direct writes may resume."""
        self.holding = False


class EpochChanged(Exception):
    """The store's log was replaced (Redis restarted): cursors of the old epoch cannot continue."""


class Channel:
    """A project's fan-out in this process. Lives while it has subscribers."""

    def __init__(
        self, project_id: str, store: Store, on_progress: Callable[[ProgressUpdate], None] | None = None
    ) -> None:
        self.project_id = project_id
        self.store = store
        #: where progress from other processes goes (a shared store brings it with the log)
        self.on_progress = on_progress or self.publish_progress
        #: where each job's output ends, as this channel has sent it: a shared store's gaps are filled from it
        self._output_ends: dict[str, tuple[int, int]] = {}
        self.subscribers: set[Subscriber] = set()
        #: where the messages handed to subscribers are counted (/metrics)
        self.counts: Counts | None = None
        self.ready = anyio.Event()
        #: told when a job's final event goes out: its progress is no longer news
        self.on_final: Callable[[str, str], None] = lambda project_id, job_id: None
        #: why the channel could not start; its subscribers get the error
        self.failure: StoreUnavailable | None = None
        self.ended = False
        self.cursor = 0
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._advanced: anyio.Event | None = None
        #: set (and replaced) each time a queued job's place changes: long-polls answer with it
        self._moved = anyio.Event()
        self.scope = anyio.CancelScope()
        #: the newest progress of each job since the last flush, and the timer of the next flush
        self._pending_progress: dict[str, ProgressUpdate] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        self._batch_seconds = PROGRESS_BATCH_SECONDS

    async def run(self) -> None:
        try:
            await self._follow()
        finally:
            self.ended = True
            if self._flush_timer is not None:
                self._flush_timer.cancel()
            self._wake_waiters()

    async def _follow(self) -> None:
        with self.scope:
            follower = self.store.follower(self.project_id)
            try:
                self.cursor = await self.store.last_seq(self.project_id)
                await follower.start()  # before ready: a subscriber's opening reads output after this point
            except StoreUnavailable as exc:
                self.failure = exc
                return
            finally:
                self.ready.set()
            epoch = self.store.epoch
            backoff = Backoff()
            while True:
                try:
                    events, progress, output = await follower.next(self.cursor, _READ_BATCH)
                except StoreUnavailable:
                    await backoff.sleep()  # the store logged the outage once; pick up where we left off
                    continue
                backoff.reset()
                if self.store.epoch != epoch:
                    raise EpochChanged(f"the store started epoch {self.store.epoch} (was {epoch})")
                if events:
                    self._fan_out(events)
                    self._wake_waiters()
                for update in progress:
                    self.on_progress(update)
                for chunk in output:
                    await self._fill_gap(chunk)
                    self.publish_output(chunk)

    def _wake_waiters(self) -> None:
        if self._advanced is not None:
            self._advanced.set()
            self._advanced = None

    async def wait_past(self, after: int) -> bool:
        """Wait until this channel has fanned out an event past ``after``; False if it ends first."""
        while self.cursor <= after and not self.ended:
            if self._advanced is None:
                self._advanced = anyio.Event()
            await self._advanced.wait()
        return self.cursor > after

    async def wait_past_or_moved(self, after: int) -> bool:
        """Like :meth:`wait_past`, but also return (False) when a queued job's place changes."""
        moved = self._moved
        result = False
        async with anyio.create_task_group() as waits:

            async def past() -> None:
                nonlocal result
                result = await self.wait_past(after)
                waits.cancel_scope.cancel()

            async def place_changed() -> None:
                await moved.wait()
                waits.cancel_scope.cancel()

            waits.start_soon(past)
            waits.start_soon(place_changed)
        return result

    def publish_places(self, messages: dict[str, Message]) -> None:
        """Queued jobs' new places (``queue`` messages): latest-value, never replayed, so no seq gates them."""
        for job_id, message in messages.items():
            for subscriber in self.subscribers:
                subscriber.push_progress(job_id, 0, message)
            self._count_sent("queue")
        self._moved.set()
        self._moved = anyio.Event()

    def publish_presence(self, message: Message) -> None:
        """The project's number of watchers (a ``presence`` message): latest-value, like a queued job's place."""
        for subscriber in self.subscribers:
            subscriber.push_progress(PRESENCE_KEY, 0, message)
        self._count_sent("presence")

    def _count_sent(self, kind: str, messages: int = 1) -> None:
        if self.counts is not None:
            self.counts.add("jobcast_messages_sent", (kind,), messages * len(self.subscribers))

    def finished(self, job_id: str) -> bool:
        return job_id in self._finished

    def _fan_out(self, events: list[Event]) -> None:
        """Hand each event, encoded once, to every subscriber: the events read together go to each ready
        socket in one write (a job's queued and running often land together), except that a job's output
        tail goes between them, just before its end."""
        group: list[tuple[int, Message, str, bool]] = []
        for event in events:
            job_id, final = event.job.job_id, event.job.status.is_final
            # The job's progress still waiting about its previous state (or any, once it ended) is superseded.
            waiting = self._pending_progress.get(job_id)
            if waiting is not None and (waiting.seq < event.seq or final):
                del self._pending_progress[job_id]
            if final:
                tail = self._output_tail(event)
                if tail is not None:  # it goes just before the end: the events before it go first
                    self._push_group(group)
                    group = []
                    self.publish_output(tail)
                self._remember_finished(job_id)
                self.on_final(self.project_id, job_id)
            group.append((event.seq, job_message(event), job_id, final))
        self._push_group(group)

    def _push_group(self, group: list[tuple[int, Message, str, bool]]) -> None:
        if not group:
            return
        if len(group) == 1:
            seq, message, job_id, final = group[0]
            for subscriber in self.subscribers:
                subscriber.push_event(seq, message, job_id, final)
        else:
            batch = Batch.of(message for _, message, _, _ in group)
            for subscriber in self.subscribers:
                subscriber.push_events(group, batch)
        self._count_sent("job", len(group))
        self.cursor = group[-1][0]

    def _output_tail(self, event: Event) -> OutputChunk | None:
        """Whatever of a finished job's output this channel has not sent (a piece still on its way between
        processes, or one a store outage held back): it goes just before the final event, which does not carry it."""
        whole = event.output()
        if whole is None:
            return None
        attempt, end = self._output_ends.get(whole.job_id, (whole.attempt, 0))
        return whole.after(end if attempt == whole.attempt else 0)

    def _remember_finished(self, job_id: str) -> None:
        self._finished[job_id] = None
        self._output_ends.pop(job_id, None)
        if len(self._finished) > _FINISHED_MEMORY:
            self._finished.popitem(last=False)

    async def _fill_gap(self, chunk: OutputChunk) -> None:
        """A chunk that starts past what this channel sent (its reader fell behind the stream's bound):
        send the missing text from the store first, so every subscriber still gets all of it."""
        attempt, end = self._output_ends.get(chunk.job_id, (chunk.attempt, chunk.offset))
        if attempt != chunk.attempt or chunk.offset <= end:
            return
        with contextlib.suppress(StoreUnavailable):  # the stream's next chunk tries again
            stored = await self.store.get_output(chunk.job_id)
            if stored is not None and stored[0] == chunk.attempt and len(stored[1]) >= chunk.offset:
                missing = stored[1][end : chunk.offset]
                self.publish_output(dataclasses.replace(chunk, offset=end, text=missing))

    def publish_output(self, chunk: OutputChunk) -> None:
        if self.finished(chunk.job_id):
            return  # nothing about a job follows its final state
        previous = self._output_ends.get(chunk.job_id)
        same_attempt = previous is not None and previous[0] == chunk.attempt
        end = max(previous[1], chunk.end) if previous is not None and same_attempt else chunk.end
        self._output_ends[chunk.job_id] = (chunk.attempt, end)
        message = output_message(chunk)
        for subscriber in self.subscribers:
            subscriber.push_output(chunk, message)
        self._count_sent("output")
        self._moved.set()  # a waiting long-poll answers with it
        self._moved = anyio.Event()

    def publish_progress(self, update: ProgressUpdate) -> None:
        """Keep the job's newest progress for the next flush, within :data:`PROGRESS_BATCH_SECONDS`."""
        if self.finished(update.job_id):
            return  # nothing about a job follows its final state
        self._pending_progress[update.job_id] = update
        if self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(self._batch_seconds, self.flush_progress)

    def flush_progress(self) -> None:
        """Hand the waiting progress to every subscriber: encoded and framed once, one write to each ready socket."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not self._pending_progress:
            return
        items = [(u.job_id, u.seq, progress_message(u)) for u in self._pending_progress.values()]
        self._pending_progress.clear()
        batch = Batch.of(message for _, _, message in items)
        newest = max(seq for _, seq, _ in items)
        started = time.perf_counter()
        for subscriber in self.subscribers:
            subscriber.push_progress_batch(items, batch, newest)
        took = time.perf_counter() - started
        self._batch_seconds = min(PROGRESS_BATCH_MAX_SECONDS, max(PROGRESS_BATCH_SECONDS, PROGRESS_LOAD_FACTOR * took))
        self._count_sent("progress", len(items))
