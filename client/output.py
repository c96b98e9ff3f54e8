"""Streamed output, put together by offset: what a job's ``output`` messages add up to.

Every transport sends a running job's output so far from offset 0 when a stream opens,
then each new piece at its offset; a piece may overlap what the client has (it is
trimmed) and a new attempt of a retried job starts again from 0. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .cursor import FINAL_STATES


def appended(have: tuple[int, str] | None, message: Mapping[str, Any]) -> tuple[int, str]:
    """The job's ``(attempt, text)`` after ``message``; unchanged for a piece that would leave a gap."""
    attempt, offset, text = int(message["attempt"]), int(message["offset"]), str(message["text"])
    current = have if have is not None and have[0] == attempt else (attempt, "")
    if offset > len(current[1]):
        return current  # never sent by the server: it resends from 0 whenever a stream opens
    joined = current[1][:offset] + text
    return (attempt, joined) if len(joined) >= len(current[1]) else current


class Outputs:
    """Each job's output as the messages so far make it; :meth:`apply` says what a message added."""

    def __init__(self) -> None:
        self._have: dict[str, tuple[int, str]] = {}

    def apply(self, message: Mapping[str, Any]) -> str:
        """Fold in a message; the text it added to the end (empty if none).

        ``output`` messages add by offset. A ``job`` message with a final state carries the whole
        output, which completes what the stream brought (a long-poll may end before its tail).
        """
        if message.get("type") == "job":
            job = message["job"]
            if job.get("output") is None or job.get("status") not in FINAL_STATES:
                return ""
            message = {"job_id": job["job_id"], "attempt": job.get("attempt", 1), "offset": 0, "text": job["output"]}
        elif message.get("type") != "output":
            return ""
        job_id = str(message["job_id"])
        before = self._have.get(job_id)
        after = appended(before, message)
        self._have[job_id] = after
        if before is None or before[0] != after[0]:
            return after[1]
        return after[1][len(before[1]) :]

    def text(self, job_id: str) -> str:
        have = self._have.get(job_id)
        return "" if have is None else have[1]

    def forget(self, job_id: str) -> None:
        self._have.pop(job_id, None)

    def cursor(self) -> str:
        """``JOB.ATTEMPT.LENGTH,...``: the long-poll's ``output`` parameter."""
        return ",".join(f"{job_id}.{attempt}.{len(text)}" for job_id, (attempt, text) in self._have.items())
