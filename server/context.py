"""The ``ctx`` an agent gets: the only bridge from a worker thread back to the event loop."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

import anyio.from_thread
from anyio.lowlevel import EventLoopToken

from .jobs import Progress

MAX_MESSAGE_LENGTH = 500

logger = logging.getLogger(__name__)


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
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], object]] = []
        #: output streamed since the engine last took it; the engine takes it every ~50 ms
        self._output: list[str] = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def demo_seconds(self) -> float:
        return self._demo_seconds

    def cancel(self) -> None:
        """Set ``cancelled`` and run each ``on_cancel`` callback once (here, in the caller's thread)."""
        with self._lock:
            self._cancelled.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _call(callback)

    def stream(self, text: str) -> None:
        if not isinstance(text, str):
            text = str(text)
        if text:
            with self._lock:
                self._output.append(text)

    @property
    def has_output(self) -> bool:
        return bool(self._output)

    def take_output(self) -> str:
        """Everything streamed since the last take (the engine's side)."""
        with self._lock:
            chunks, self._output = self._output, []
        return "".join(chunks)

    def on_cancel(self, callback: Callable[[], object]) -> None:
        with self._lock:
            if not self._cancelled.is_set():
                self._callbacks.append(callback)
                return
        _call(callback)

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


def _call(callback: Callable[[], object]) -> None:
    """An agent's callback; its failure is logged, never raised into the engine."""
    try:
        callback()
    except Exception:
        logger.exception("an on_cancel callback failed")


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
