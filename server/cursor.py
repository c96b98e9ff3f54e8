"""The cursor rules shared by WebSocket, SSE and long-poll. Pure: no I/O.

A cursor is ``(epoch, after)``: the last event a client applied. It resumes only if
the epoch is the store's and every event after it is still inside the history window;
anything else, including junk, gets a snapshot, so a gap is never silent.

A history page cursor (``GET /api/jobs?before=``) is another thing: the opaque
position of the last job of a page, :func:`encode_history` / :func:`decode_history`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math

from .errors import InvalidInput
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


def encode_history(key: tuple[float, str]) -> str:
    """The opaque ``before`` of the next history page: the last job's (created_at, job_id)."""
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_history(text: str) -> tuple[float, str]:
    """What :func:`encode_history` made; anything else is 400 ``invalid_cursor``."""
    invalid = InvalidInput("invalid_cursor", "before must be the 'next' of a previous page, unchanged")
    if len(text) > 200:
        raise invalid
    try:
        created_at, job_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, TypeError, binascii.Error, RecursionError):
        raise invalid from None
    if isinstance(created_at, bool) or not isinstance(created_at, int | float) or not isinstance(job_id, str):
        raise invalid
    if not math.isfinite(created_at):
        raise invalid
    return float(created_at), job_id
