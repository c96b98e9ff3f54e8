"""Limits on what one client can hold or do: open streams, job starts, WebSocket messages.

Plain in-process counters and token buckets, with the clock passed in, so tests drive
them directly. They are per process; on a Redis store the start limit is kept in Redis
instead, for the whole cluster (:meth:`~server.store.Store.take_start`, used by
:func:`server.access.check_start`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .errors import RateLimited, TooManyConnections

Clock = Callable[[], float]

#: buckets kept before full (idle) ones are dropped
_PRUNE_ABOVE = 10_000


if TYPE_CHECKING:
    from .settings import Settings


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

    def acquire(self, address: str) -> None:
        """Count one more stream of ``address``; TooManyConnections if it holds the limit already."""
        if self._open[address] >= self.limit:
            raise TooManyConnections(self.limit)
        self._open[address] += 1

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

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = time.monotonic) -> Limits:
        counter = ConnectionCounter(settings.max_connections_per_client)
        starts = RateLimiter(settings.starts_per_minute, clock)
        return cls(counter, starts, settings.ws_messages_per_second, clock)

    def message_allowance(self) -> Callable[[], bool]:
        """For one WebSocket: call it per inbound message; False once the client sends too fast.

        A client may send one second's worth at once, then ``messages_per_second``.
        """
        bucket = TokenBucket(self.messages_per_second, self.messages_per_second, self.clock())
        return lambda: bucket.take(self.clock()) == 0
