"""The cursor and the de-duplication of transitions: the subscription's core, with no I/O.

A :class:`Tracker` sees every message any transport delivers, in order, and decides
which reach the caller. It keeps the cursor ``(epoch, after)`` from snapshots and
transitions, and drops a transition the caller has already had (a ``seq`` at or below
the cursor in the same epoch), which can happen when a stream is replaced mid-flight.
"""

from __future__ import annotations

import dataclasses
from typing import Any

Message = dict[str, Any]

#: the job states after which nothing about a job follows
FINAL_STATES = frozenset({"completed", "failed", "cancelled", "timed_out"})


@dataclasses.dataclass(frozen=True)
class Cursor:
    """The last transition applied: the one numbered ``after`` in the log named ``epoch``.

    ``after`` as the server and the wire call it (``?epoch=E&after=N``): resume after it.
    """

    epoch: str
    after: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.after}"


class Tracker:
    """Holds the cursor; :meth:`accept` says whether a message is new to the caller."""

    def __init__(self, cursor: Cursor | None = None) -> None:
        self.cursor = cursor
        #: True once any stream has opened (sent a snapshot or a welcome)
        self.opened = False

    def accept(self, message: Message) -> bool:
        kind = message.get("type")
        if kind == "snapshot":
            self.cursor = Cursor(str(message["epoch"]), int(message["seq"]))
        elif kind == "job":
            return self._transition(message)
        elif kind == "pong":
            return False
        if kind in ("snapshot", "welcome"):
            self.opened = True
        return True

    def _transition(self, message: Message) -> bool:
        epoch, seq = str(message["epoch"]), int(message["seq"])
        if self.cursor is not None and self.cursor.epoch == epoch and seq <= self.cursor.after:
            return False
        self.cursor = Cursor(epoch, seq)
        return True
