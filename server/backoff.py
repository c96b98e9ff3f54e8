"""Backoff with jitter, the one rule for waiting on a store that is down: 0.1 s, doubling, up to 2 s.

Channel readers (:mod:`.hub`) and the engine's writes that must land (:mod:`.engine`) use it.
"""

from __future__ import annotations

import random

import anyio

FIRST_DELAY = 0.1
MAX_DELAY = 2.0


class Backoff:
    def __init__(self) -> None:
        self.delay = FIRST_DELAY

    def next_delay(self) -> float:
        """The next wait: between half and all of the current delay. The one after doubles, up to MAX_DELAY."""
        delay = self.delay * random.uniform(0.5, 1.0)
        self.delay = min(self.delay * 2, MAX_DELAY)
        return delay

    async def sleep(self) -> None:
        await anyio.sleep(self.next_delay())

    def reset(self) -> None:
        self.delay = FIRST_DELAY
