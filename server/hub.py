"""The hub: this process's channels by project (:mod:`.channel`), and what they share.

It starts a project's channel when its first subscriber joins and ends it when the last
leaves; it keeps the latest progress of running jobs for new subscribers and long-polls,
sends this process's progress through a shared store, and lets long-polls wait on a
channel rather than on a store connection each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

from .channel import PRESENCE_KEY, Channel, EpochChanged, Subscriber
from .errors import StoreUnavailable
from .jobs import OutputChunk, ProgressUpdate
from .metrics import Metrics
from .scheduling import Place
from .store import Store
from .wire import CHANNEL_FAILED, NEW_EPOCH, Message, presence_message, progress_message, queue_message

#: A queued job's place is pushed at most this often (it is latest-value, like progress).
QUEUE_PUSH_INTERVAL = 1.0

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Hub:
    """Channels by project for this process."""

    def __init__(self, store: Store, task_group: TaskGroup, send_buffer: int, metrics: Metrics | None = None) -> None:
        self.store = store
        self.metrics = metrics or Metrics()
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
        #: where queued jobs stand (the engine's :meth:`~server.engine.Engine.places`); set by the app
        self.queue_source: Callable[[], Coroutine[Any, Any, dict[str, Place]]] | None = None
        #: the last ``queue`` message sent for each queued job of each followed project
        self._places: dict[str, dict[str, Message]] = {}
        self._places_stale = False
        self._placing = False
        #: the last ``presence`` message sent for each followed project
        self._presence: dict[str, PresenceNews] = {}

    @property
    def subscriber_count(self) -> int:
        """Open WebSockets and SSE streams."""
        return sum(len(channel.subscribers) for channel in self._channels.values()) - self.waiting_polls

    def subscribers_by_transport(self) -> dict[str, int]:
        """Open WebSockets, SSE streams and waiting long-polls, by transport (/metrics)."""
        counted = dict.fromkeys(("websocket", "sse", "longpoll"), 0)
        for channel in self._channels.values():
            for subscriber in channel.subscribers:
                counted[subscriber.transport] = counted.get(subscriber.transport, 0) + 1
        return counted

    def watcher_counts(self) -> dict[str, int]:
        """Open WebSockets (and /ws subscriptions) and SSE streams per project; long-polls are counted apart."""
        counted = {}
        for project_id, channel in self._channels.items():
            watching = sum(not isinstance(sub, _Waiter) for sub in channel.subscribers)
            if watching:
                counted[project_id] = watching
        return counted

    def followed_projects(self) -> list[str]:
        """The projects this process has a channel for."""
        return list(self._channels)

    def publish_presence(self, project_id: str, watching: int) -> None:
        """Push the project's number of watchers if it changed (latest-value, like progress)."""
        channel = self._channels.get(project_id)
        sent = self._presence.get(project_id)
        if channel is None or (sent is not None and sent.watching == watching):
            return
        self._presence[project_id] = sent = PresenceNews(watching, presence_message(project_id, watching))
        channel.publish_presence(sent.message)

    @property
    def waiting_polls(self) -> int:
        """Long-polls waiting on a channel."""
        return sum(isinstance(sub, _Waiter) for channel in self._channels.values() for sub in channel.subscribers)

    @contextlib.asynccontextmanager
    async def subscribe(self, project_id: str) -> AsyncIterator[Subscriber]:
        """Join the project's channel; live events queue up from the moment this returns."""
        subscriber = Subscriber(self._send_buffer, "sse")
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
            channel.counts = self.metrics.counts
            self._task_group.start_soon(self._run_channel, channel, name=f"channel {project_id}")
            self.queue_changed()  # its queued jobs' places, for the new subscribers
        subscriber.counts = self.metrics.counts
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
            self._places.pop(project_id, None)
            self._presence.pop(project_id, None)

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
            if channel is None:
                return False
            woken = False
            with anyio.move_on_after(timeout):
                async with anyio.create_task_group() as tasks:

                    async def wake(news: Coroutine[Any, Any, Any]) -> None:
                        nonlocal woken
                        woken = bool(await news) or woken
                        tasks.cancel_scope.cancel()

                    tasks.start_soon(wake, channel.wait_past_or_moved(after))
                    tasks.start_soon(wake, _progressed(waiter))
            return woken
        finally:
            self.leave(project_id, waiter)

    async def unless_closing(self, awaitable: Coroutine[Any, Any, T], default: T) -> T:
        """Await ``awaitable``, or return ``default`` as soon as the server starts shutting down."""
        result = default
        failure: Exception | None = None
        async with anyio.create_task_group() as tasks:

            async def run() -> None:
                nonlocal result, failure
                try:
                    result = await awaitable
                except Exception as exc:  # raised plainly below, not as a task group's ExceptionGroup (a 503 stays one)
                    failure = exc
                tasks.cancel_scope.cancel()

            tasks.start_soon(run)
            await self.closing.wait()
            tasks.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return result

    def new_subscriber(self) -> Subscriber:
        return Subscriber(self._send_buffer)

    def spawn(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run a connection's helper (a drainer, a close) in the app's task group."""
        self._task_group.start_soon(function, *args)

    def add_latest_progress(self, project_id: str, subscriber: Subscriber) -> None:
        """After a snapshot or resume, hand the subscriber each running job's latest progress and queued job's place."""
        for update in self._latest.get(project_id, {}).values():
            subscriber.push_progress(update.job_id, update.seq, progress_message(update))
        for job_id, message in self._places.get(project_id, {}).items():
            subscriber.push_progress(job_id, 0, message)
        presence = self._presence.get(project_id)
        if presence is not None:
            subscriber.push_progress(PRESENCE_KEY, 0, presence.message)

    # -- where queued jobs stand ------------------------------------------------------------

    def queue_changed(self) -> None:
        """Called by the engine whenever the queue may have moved: push the places that changed,
        at once if none went out in the last second, else at the end of that second."""
        if self._placing:
            self._places_stale = True
            return
        self._placing = True
        self._task_group.start_soon(self._push_places, name="queue places")

    async def _push_places(self) -> None:
        try:
            while True:
                self._places_stale = False
                try:
                    await self._push_places_once()
                except StoreUnavailable:
                    self._places_stale = True  # the store logged it; the next round catches up
                except Exception:  # runs in the app's task group: an error here must not end the app
                    logger.exception("could not work out where queued jobs stand")
                await anyio.sleep(QUEUE_PUSH_INTERVAL)
                if not self._places_stale:
                    return
        finally:
            self._placing = False

    async def _push_places_once(self) -> None:
        if self.queue_source is None or not self._channels:
            self._places.clear()
            return
        found = await self.queue_source()
        fresh: dict[str, dict[str, Message]] = {}
        for place in found.values():
            if place.project_id in self._channels:
                fresh.setdefault(place.project_id, {})[place.job_id] = queue_message(place)
        for project_id, messages in fresh.items():
            channel = self._channels.get(project_id)
            sent = self._places.get(project_id, {})
            changed = {job_id: m for job_id, m in messages.items() if job_id not in sent or sent[job_id].text != m.text}
            if channel is not None and changed:
                channel.publish_places(changed)
        self._places = fresh

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
        try:
            await self._write_progress(job_id)
        except Exception:  # runs in the app's task group: an error here must not end the app
            logger.exception("could not send the progress of job %s to the store", job_id)
            self._unshared.pop(job_id, None)

    async def _write_progress(self, job_id: str) -> None:
        """Write the job's newest progress until none is left: a slow store coalesces ticks, never piles them up."""
        while (update := self._unshared.get(job_id)) is not None:
            with contextlib.suppress(StoreUnavailable):  # latest-value: the next tick makes up for it
                await self.store.publish_progress(update)
            if self._unshared.get(job_id) is update:
                del self._unshared[job_id]

    def publish_output(self, chunk: OutputChunk) -> None:
        """Called by the engine with each piece a running job streamed, once the store has it (an embedded
        store: a shared one carries it to every process's channel reader, this one's included)."""
        channel = self._channels.get(chunk.project_id)
        if channel is not None:
            channel.publish_output(chunk)

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


@dataclasses.dataclass(frozen=True)
class PresenceNews:
    watching: int
    message: Message


async def _progressed(waiter: _Waiter) -> bool:
    await waiter.progressed.wait()
    return True


class _Waiter(Subscriber):
    """Keeps a channel open for a long-poll; it takes no messages, the long-poll reads the store.
    A running job's progress wakes it (``progressed``): a poller sees progress as it happens,
    at most once per progress tick, not only with the next transition."""

    __slots__ = ("progressed",)

    def __init__(self, limit: int) -> None:
        super().__init__(limit, "longpoll")
        self.progressed = anyio.Event()

    def push_event(self, seq: int, message: Message, job_id: str, final: bool) -> None:
        pass

    def push_progress(self, job_id: str, seq: int, message: Message) -> None:
        self.progressed.set()

    def push_output(self, chunk: OutputChunk, message: Message) -> None:
        pass
