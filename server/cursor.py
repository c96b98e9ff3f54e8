"""The cursor rules shared by WebSocket, SSE and long-poll. Pure: no I/O.

A cursor is ``(epoch, after)``: the last event a client applied. It resumes only if
the epoch is the store's and every event after it is still inside the history window;
anything else, including junk, gets a snapshot, so a gap is never silent.
"""

from __future__ import annotations

import dataclasses

from .validation import whole_number


@dataclasses.dataclass(frozen=True)
class Cursor:
    epoch: str
    after: int


@dataclasses.dataclass(frozen=True)
class Resume:
    """Replay the events after ``after``, then go live."""

    after: int


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Send the whole current state, with ``recovered: false``."""

    reason: str


def parse_cursor(epoch: str | None, after: str | None) -> Cursor | None:
    """A cursor from query parameters; None when absent or malformed."""
    seq = None if after is None else whole_number(after)
    if not epoch or seq is None or len(epoch) > 64:
        return None
    return Cursor(epoch=epoch, after=seq)


def parse_last_event_id(value: str | None) -> Cursor | None:
    """A cursor from an SSE ``Last-Event-ID`` of the form ``epoch:seq``."""
    if not value:
        return None
    epoch, sep, after = value.rpartition(":")
    return parse_cursor(epoch, after) if sep else None


def plan(cursor: Cursor | None, *, epoch: str, last_seq: int, history: int) -> Resume | Snapshot:
    """Decide between an exact resume and a snapshot."""
    if cursor is None:
        return Snapshot("no cursor")
    if cursor.epoch != epoch:
        return Snapshot("the cursor is from another epoch")
    if cursor.after > last_seq:
        return Snapshot("the cursor is ahead of the log")
    if cursor.after < last_seq - history:
        return Snapshot("the cursor is older than the history window")
    return Resume(cursor.after)
