"""When a subscription reconnects: exponential backoff with jitter, as a replaceable policy."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable


@dataclasses.dataclass(frozen=True, kw_only=True)
class Reconnect:
    """Exponential backoff with jitter. Subclass and override :meth:`delay` for another curve.

    Retry ``n`` (0 for the first after a failure) waits ``min(maximum, initial * factor ** n)``
    seconds, scaled by a random factor in ``[1 - jitter, 1]`` so that many clients dropped
    at once do not come back at once. A stream that opens resets ``n`` to 0.
    """

    #: seconds before the first retry
    initial: float = 0.5
    #: growth of the delay per consecutive failure
    factor: float = 2.0
    #: the longest delay
    maximum: float = 5.0
    #: the fraction of each delay that is random (0: none, 1: "full jitter")
    jitter: float = 0.5
    #: stop, raising ServerUnreachable, after failing for this many seconds in a row (None: never)
    give_up_after: float | None = 60.0
    #: retry when the very first connection fails; by default a wrong URL fails at once
    retry_first: bool = False

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        ceiling = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return ceiling * (1 - self.jitter * rand())

    def gives_up(self, failing_for: float) -> bool:
        """Whether to stop, after ``failing_for`` seconds without an open stream."""
        return self.give_up_after is not None and failing_for >= self.give_up_after
