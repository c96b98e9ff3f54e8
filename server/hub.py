"""Fan-out: one channel per project with local subscribers, one reader per channel.

The reader follows the store's event log and pushes each event, encoded once, into
every subscriber's bounded queue without awaiting any socket. Progress is
latest-value: each subscriber keeps only the newest progress per job. A subscriber
whose queue of transitions overflows is flagged, and its transport closes it; the
client resumes from its cursor and loses nothing.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

from .backoff import Backoff
from .errors import StoreUnavailable
from .jobs import Event, ProgressUpdate, isoformat, now
from .store import Store

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Why a subscriber is closed: the close frame's reason (1013), and the log's.
FELL_BEHIND = "too far behind; resume from your cursor"
NEW_EPOCH = "the store started a new epoch; reconnect for a fresh snapshot"
CHANNEL_FAILED = "the project's channel stopped; reconnect with your cursor"

#: How many finished job ids a channel remembers, to drop progress that races a final state.
_FINISHED_MEMORY = 1024
_READ_BATCH = 500


@dataclasses.dataclass(frozen=True)
class Message:
    """One encoded message for a subscriber. ``event_id`` is ``epoch:seq`` for transitions."""

    type: str
    text: str
    event_id: str | None = None

    @functools.cached_property
    def data(self) -> bytes:
        """UTF-8, computed once however many subscribers write it."""
        return self.text.encode()


def encode(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))


def event_message(event: Event) -> Message:
    return Message("job", encode(event.to_dict()), f"{event.epoch}:{event.seq}")


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
        "limit", "last_seq", "writer", "on_backlog", "on_overflow", "holding", "close_reason",
        "_transitions", "_progress", "_wake", "_overflowed",
    )  # fmt: skip

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.last_seq = 0
        self.writer: Callable[[bytes], bool] | None = None
        self.on_backlog: Callable[[], object] | None = None
        self.on_overflow: Callable[[], object] | None = None
        #: true until the transport has sent the opening messages, and while it drains
        self.holding = True
        #: set when the subscriber must be closed: one of FELL_BEHIND, NEW_EPOCH, CHANNEL_FAILED
        self.close_reason: str | None = None
        self._transitions: collections.deque[tuple[int, Message]] = collections.deque()
        self._progress: dict[str, tuple[int, Message]] = {}
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
        if self._write_now(message):
            return
        if len(self._transitions) >= self.limit:
            self.end(FELL_BEHIND)
            return
        self._transitions.append((seq, message))
        self._backlogged()

    def push_progress(self, job_id: str, seq: int, message: Message) -> None:
        # Progress about a transition this subscriber has not been given yet is dropped;
        # the job's next tick brings it once the transition is through.
        if seq > self.last_seq or self._is_overflowed() or self._write_now(message):
            return
        self._progress[job_id] = (seq, message)
        self._backlogged()

    def _write_now(self, message: Message) -> bool:
        if self.holding or self.writer is None or self._transitions or self._progress:
            return False
        return self.writer(message.data)

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
        self.overflowed.set()
        self._set_wake()
        if self.on_overflow is not None:
            self.on_overflow()

    def rebase(self, seq: int) -> None:
        """The subscriber already has everything up to ``seq`` (from a snapshot or replay)."""
        while self._transitions and self._transitions[0][0] <= seq:
            self._transitions.popleft()
        self.last_seq = max(self.last_seq, seq)

    def take_batch(self) -> list[Message]:
        """Everything queued: transitions first, in order, then the newest progress per job."""
        batch = [message for _, message in self._transitions]
        batch.extend(message for _, message in self._progress.values())
        self._transitions.clear()
        self._progress.clear()
        return batch

    async def next_batch(self) -> list[Message]:
        """Wait for something queued (for transports that drain in a loop, like SSE)."""
        while not (self._transitions or self._progress or self._is_overflowed()):
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
        self.subscribers: set[Subscriber] = set()
        self.ready = anyio.Event()
        #: told when a job's final event goes out: its progress is no longer news
        self.on_final: Callable[[str, str], None] = lambda project_id, job_id: None
        #: why the channel could not start; its subscribers get the error
        self.failure: StoreUnavailable | None = None
        self.ended = False
        self.cursor = 0
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._advanced: anyio.Event | None = None
        self.scope = anyio.CancelScope()

    async def run(self) -> None:
        try:
            await self._follow()
        finally:
            self.ended = True
            self._wake_waiters()

    async def _follow(self) -> None:
        with self.scope:
            try:
                self.cursor = await self.store.last_seq(self.project_id)
            except StoreUnavailable as exc:
                self.failure = exc
                return
            finally:
                self.ready.set()
            epoch = self.store.epoch
            follower = self.store.follower(self.project_id)
            backoff = Backoff()
            while True:
                try:
                    events, progress = await follower.next(self.cursor, _READ_BATCH)
                except StoreUnavailable:
                    await backoff.sleep()  # the store logged the outage once; pick up where we left off
                    continue
                backoff.reset()
                if self.store.epoch != epoch:
                    raise EpochChanged(f"the store started epoch {self.store.epoch} (was {epoch})")
                for event in events:
                    self._fan_out(event)
                if events:
                    self._wake_waiters()
                for update in progress:
                    self.on_progress(update)

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

    def finished(self, job_id: str) -> bool:
        return job_id in self._finished

    def _fan_out(self, event: Event) -> None:
        message = event_message(event)  # encoded once for every subscriber
        final = event.job.status.is_final
        if final:
            self._remember_finished(event.job.job_id)
            self.on_final(self.project_id, event.job.job_id)
        for subscriber in self.subscribers:
            subscriber.push_event(event.seq, message, event.job.job_id, final)
        self.cursor = event.seq

    def _remember_finished(self, job_id: str) -> None:
        self._finished[job_id] = None
        if len(self._finished) > _FINISHED_MEMORY:
            self._finished.popitem(last=False)

    def publish_progress(self, update: ProgressUpdate) -> None:
        if self.finished(update.job_id):
            return  # nothing about a job follows its final state
        message = Message("progress", encode(update.to_dict()))
        for subscriber in self.subscribers:
            subscriber.push_progress(update.job_id, update.seq, message)


class Hub:
    """Channels by project for this process."""

    def __init__(self, store: Store, task_group: TaskGroup, send_buffer: int) -> None:
        self.store = store
        self._task_group = task_group
        self._send_buffer = send_buffer
        self._channels: dict[str, Channel] = {}
        self._latest: dict[str, dict[str, ProgressUpdate]] = {}
        #: jobs running in this process; other processes' progress is kept only while a channel follows it
        self._local_jobs: set[str] = set()
        #: progress waiting to go to a shared store, newest per job; one write per job is in flight at most
        self._unshared: dict[str, ProgressUpdate] = {}
        #: set when the server begins to shut down: open streams and long-polls end at once
        self.closing = anyio.Event()

    @property
    def subscriber_count(self) -> int:
        """Open WebSockets and SSE streams."""
        return sum(len(channel.subscribers) for channel in self._channels.values()) - self.waiting_polls

    @property
    def waiting_polls(self) -> int:
        """Long-polls waiting on a channel."""
        return sum(isinstance(sub, _Waiter) for channel in self._channels.values() for sub in channel.subscribers)

    @contextlib.asynccontextmanager
    async def subscribe(self, project_id: str) -> AsyncIterator[Subscriber]:
        """Join the project's channel; live events queue up from the moment this returns."""
        subscriber = Subscriber(self._send_buffer)
        try:
            await self.join(project_id, subscriber)
            yield subscriber
        finally:
            self.leave(project_id, subscriber)

    async def join(self, project_id: str, subscriber: Subscriber) -> None:
        """Like :meth:`subscribe` without a context manager; pair it with :meth:`leave`."""
        channel = self._channels.get(project_id)
        if channel is None:
            channel = self._channels[project_id] = Channel(project_id, self.store, self._deliver_progress)
            channel.on_final = self.job_ended
            self._task_group.start_soon(self._run_channel, channel, name=f"channel {project_id}")
        channel.subscribers.add(subscriber)  # before waiting, so the channel cannot close under us
        await channel.ready.wait()
        if channel.failure is not None:
            self.leave(project_id, subscriber)
            raise channel.failure

    def leave(self, project_id: str, subscriber: Subscriber) -> None:
        channel = self._channels.get(project_id)
        if channel is None or subscriber not in channel.subscribers:
            return
        channel.subscribers.discard(subscriber)
        if not channel.subscribers:
            channel.scope.cancel()
            del self._channels[project_id]
            self._forget_remote_progress(project_id)

    def _forget_remote_progress(self, project_id: str) -> None:
        """Without a channel, nothing tells this process when another process's job ends."""
        jobs = self._latest.get(project_id, {})
        for job_id in [job_id for job_id in jobs if job_id not in self._local_jobs]:
            del jobs[job_id]
        if not jobs:
            self._latest.pop(project_id, None)

    async def wait_for_events(self, project_id: str, after: int, timeout: float) -> bool:
        """For long-polls: wait on the project's channel (one store reader, however many wait)."""
        waiter = _Waiter(0)
        try:
            await self.join(project_id, waiter)
            channel = self._channels.get(project_id)
            with anyio.move_on_after(timeout):
                return channel is not None and await channel.wait_past(after)
            return False
        finally:
            self.leave(project_id, waiter)

    async def unless_closing(self, awaitable: Coroutine[Any, Any, T], default: T) -> T:
        """Await ``awaitable``, or return ``default`` as soon as the server starts shutting down."""
        result = default
        async with anyio.create_task_group() as tasks:

            async def run() -> None:
                nonlocal result
                result = await awaitable
                tasks.cancel_scope.cancel()

            tasks.start_soon(run)
            await self.closing.wait()
            tasks.cancel_scope.cancel()
        return result

    def new_subscriber(self) -> Subscriber:
        return Subscriber(self._send_buffer)

    def spawn(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run a connection's helper (a drainer, a close) in the app's task group."""
        self._task_group.start_soon(function, *args)

    def add_latest_progress(self, project_id: str, subscriber: Subscriber) -> None:
        """After a snapshot or resume, hand the subscriber each running job's latest progress."""
        for update in self._latest.get(project_id, {}).values():
            subscriber.push_progress(update.job_id, update.seq, Message("progress", encode(update.to_dict())))

    def latest_progress(self, project_id: str) -> list[dict[str, Any]]:
        """The latest progress of each running job of the project, for long-poll replies."""
        return [update.to_dict() for update in self._latest.get(project_id, {}).values()]

    def publish_progress(self, update: ProgressUpdate) -> None:
        """Called by the engine on each tick and report of a running job."""
        self._local_jobs.add(update.job_id)
        if self.store.shared:
            # Every process's channel reader, this one's included, gets it back from the store.
            self._latest.setdefault(update.project_id, {})[update.job_id] = update
            writing = update.job_id in self._unshared
            self._unshared[update.job_id] = update
            if not writing:
                self._task_group.start_soon(self._share_progress, update.job_id)
        else:
            self._deliver_progress(update)

    async def _share_progress(self, job_id: str) -> None:
        """Write the job's newest progress until none is left: a slow store coalesces ticks, never piles them up."""
        while (update := self._unshared.get(job_id)) is not None:
            with contextlib.suppress(StoreUnavailable):  # latest-value: the next tick makes up for it
                await self.store.publish_progress(update)
            if self._unshared.get(job_id) is update:
                del self._unshared[job_id]

    def _deliver_progress(self, update: ProgressUpdate) -> None:
        channel = self._channels.get(update.project_id)
        if channel is not None and channel.finished(update.job_id):
            return  # late progress of a job whose final state already went out
        self._latest.setdefault(update.project_id, {})[update.job_id] = update
        if channel is not None:
            channel.publish_progress(update)

    def job_ended(self, project_id: str, job_id: str) -> None:
        """Called by the engine once a job is final: its progress is no longer news."""
        self._local_jobs.discard(job_id)
        jobs = self._latest.get(project_id)
        if jobs is not None:
            jobs.pop(job_id, None)
            if not jobs:
                del self._latest[project_id]

    async def _run_channel(self, channel: Channel) -> None:
        try:
            await channel.run()
        except EpochChanged as exc:
            logger.warning("project %s: %s; its subscribers resume with a fresh snapshot", channel.project_id, exc)
            self._close_channel(channel, NEW_EPOCH)
        except Exception:
            logger.exception("the channel of project %s stopped; closing its subscribers", channel.project_id)
            self._close_channel(channel, CHANNEL_FAILED)
        else:
            if channel.failure is not None and self._channels.get(channel.project_id) is channel:
                del self._channels[channel.project_id]

    def _close_channel(self, channel: Channel, reason: str) -> None:
        """Close every subscriber (they resume from their cursors) and forget the channel."""
        for subscriber in list(channel.subscribers):
            subscriber.end(reason)
        if self._channels.get(channel.project_id) is channel:
            del self._channels[channel.project_id]
            self._forget_remote_progress(channel.project_id)


class _Waiter(Subscriber):
    """Keeps a channel open for a long-poll; it takes no messages, the long-poll reads the store."""

    def push_event(self, seq: int, message: Message, job_id: str, final: bool) -> None:
        pass

    def push_progress(self, job_id: str, seq: int, message: Message) -> None:
        pass


def server_time() -> str | None:
    return isoformat(now())
