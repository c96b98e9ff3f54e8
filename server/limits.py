"""Limits on what one client can hold or do: open streams, job starts, WebSocket messages.

Plain in-process counters and token buckets, with the clock passed in, so tests drive
them directly. On a Redis store two of them hold for the whole cluster: the start limit
is kept in Redis (:meth:`~server.store.Store.take_start`, used by
:func:`server.access.check_start`), and the connection cap adds the streams the client
holds in the other processes, which each publishes every :data:`PUBLISH_INTERVAL`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import anyio

from .errors import RateLimited, StoreUnavailable, TooManyConnections

Clock = Callable[[], float]

#: buckets kept before full (idle) ones are dropped
_PRUNE_ABOVE = 10_000
#: how often each process publishes its streams per client address (a shared store), and how long they count:
#: the cluster-wide cap may let through what several processes accept within one interval
PUBLISH_INTERVAL = 1.0
CONNECTIONS_MAX_AGE = 5.0


if TYPE_CHECKING:
    from .settings import Settings
    from .store import Store


class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` a second; each action takes one."""

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self.tokens = capacity
        self.updated = now

    def take(self, now: float) -> float:
        """0 if a token was taken; otherwise the seconds until one will be there."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.updated) * self.rate >= self.capacity


class RateLimiter:
    """One token bucket per key (a token's digest, or a client address)."""

    def __init__(self, per_minute: int, clock: Clock = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, key: str) -> None:
        """Take one action for ``key``, or raise RateLimited with the seconds to wait."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._prune(now)
            bucket = self._buckets[key] = TokenBucket(self.per_minute, self.per_minute / 60, now)
        wait = bucket.take(now)
        if wait:
            raise RateLimited(self.per_minute, max(1, math.ceil(wait)))

    def _prune(self, now: float) -> None:
        if len(self._buckets) >= _PRUNE_ABOVE:
            self._buckets = {key: b for key, b in self._buckets.items() if not b.full(now)}


class ConnectionCounter:
    """Open streams per client address, refused past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: collections.Counter[str] = collections.Counter()

    def count(self, address: str) -> int:
        return self._open[address]

    def acquire(self, address: str, elsewhere: int = 0) -> None:
        """Count one more stream of ``address``; TooManyConnections if it holds the limit already,
        here and ``elsewhere`` (in the other processes of a cluster) together."""
        if self._open[address] + elsewhere >= self.limit:
            raise TooManyConnections(self.limit)
        self._open[address] += 1

    def table(self) -> dict[str, int]:
        return dict(self._open)

    def release(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]

    @contextlib.contextmanager
    def hold(self, address: str) -> Iterator[None]:
        """One stream of ``address`` while inside."""
        self.acquire(address)
        try:
            yield
        finally:
            self.release(address)


@dataclasses.dataclass
class Limits:
    """The limits of one app."""

    connections: ConnectionCounter
    starts: RateLimiter
    messages_per_second: int
    clock: Clock = time.monotonic
    #: this process, among those that publish their streams to a shared store
    process: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])

    async def open_stream(self, address: str, store: Store) -> None:
        """Count a stream of ``address`` against the cap, across the cluster on a shared store;
        release it with ``connections.release``. While the store does not answer, this process's count decides."""
        elsewhere = 0
        if store.shared:
            with contextlib.suppress(StoreUnavailable):
                elsewhere = await store.connections_elsewhere(address, self.process, CONNECTIONS_MAX_AGE)
        self.connections.acquire(address, elsewhere)

    async def keep_publishing(self, store: Store) -> None:
        """On a shared store, publish this process's streams per address every :data:`PUBLISH_INTERVAL`."""
        if not store.shared:
            return
        while True:
            with contextlib.suppress(Exception):  # the store is away or slow: the next round, never the app's end
                await store.publish_connections(self.process, self.connections.table(), CONNECTIONS_MAX_AGE)
            await anyio.sleep(PUBLISH_INTERVAL)

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = time.monotonic) -> Limits:
        counter = ConnectionCounter(settings.max_connections_per_client)
        starts = RateLimiter(settings.starts_per_minute, clock)
        return cls(counter, starts, settings.ws_messages_per_second, clock)

    def message_allowance(self, burst: int = 0) -> Callable[[], bool]:
        """For one WebSocket: call it per inbound message; False once the client sends too fast.

        A client may send one second's worth at once (or ``burst``, if more: a multiplexed socket
        subscribes all its projects at once), then ``messages_per_second``.
        """
        capacity = max(self.messages_per_second, burst)
        bucket = TokenBucket(capacity, self.messages_per_second, self.clock())
        return lambda: bucket.take(self.clock()) == 0
