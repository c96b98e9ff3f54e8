"""The ``ctx`` an agent gets: the only bridge from a worker thread back to the event loop."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import anyio.from_thread
from anyio.lowlevel import EventLoopToken

from .jobs import Progress

MAX_MESSAGE_LENGTH = 500


class RunContext:
    """Implements :class:`agents.Context` for one job; thread-safe."""

    def __init__(
        self,
        *,
        demo_seconds: float,
        on_report: Callable[[Progress], None],
        token: EventLoopToken,
    ) -> None:
        self._demo_seconds = demo_seconds
        self._on_report = on_report
        self._token = token
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def demo_seconds(self) -> float:
        return self._demo_seconds

    def cancel(self) -> None:
        self._cancelled.set()

    def sleep(self, seconds: float) -> bool:
        return self._cancelled.wait(max(0.0, seconds))

    def report(self, percent: float | None = None, message: str | None = None) -> None:
        progress = Progress(percent=clean_percent(percent), message=clean_message(message))
        if progress.percent is None and progress.message is None:
            return
        try:
            anyio.from_thread.run_sync(self._on_report, progress, token=self._token)
        except RuntimeError:
            # The loop is gone: the server shut down and abandoned this thread.
            pass


def clean_percent(percent: object) -> float | None:
    """A percent clamped to 0..100; anything that is not a finite number is ignored."""
    if isinstance(percent, bool) or not isinstance(percent, int | float):
        return None
    if not math.isfinite(percent):
        return None
    return round(min(100.0, max(0.0, float(percent))), 2)


def clean_message(message: object) -> str | None:
    if message is None:
        return None
    return str(message)[:MAX_MESSAGE_LENGTH]
