"""What ``jobcast`` exits with, and the worst-outcome rule. Pure."""

from __future__ import annotations

import enum
from collections.abc import Iterable


class ExitCode(enum.IntEnum):
    """The CLI's exit codes; scripts may rely on them."""

    #: every job completed (or the command did what it was asked)
    OK = 0
    #: a job failed
    FAILED = 1
    #: a usage error, or input the server refused (its message is printed)
    USAGE = 2
    #: a job timed out, or ``--timeout`` ran out before the jobs were final
    TIMED_OUT = 3
    #: a job was cancelled
    CANCELLED = 4
    #: the server is unreachable, or does not answer like a jobcast server
    UNAVAILABLE = 69
    #: a bug in the client: it says so in one line (please report it)
    INTERNAL = 70
    #: interrupted: Ctrl-C, or the reader of stdout went away
    INTERRUPTED = 130


#: job status to exit code, for the final states
_BY_STATUS = {
    "completed": ExitCode.OK,
    "failed": ExitCode.FAILED,
    "timed_out": ExitCode.TIMED_OUT,
    "cancelled": ExitCode.CANCELLED,
}
#: worst first: a failure outranks a timeout, which outranks a cancel
_SEVERITY = (ExitCode.FAILED, ExitCode.TIMED_OUT, ExitCode.CANCELLED, ExitCode.OK)


def for_statuses(statuses: Iterable[str]) -> ExitCode:
    """The exit code of the worst final status; OK when there are none."""
    codes = {_BY_STATUS.get(status, ExitCode.FAILED) for status in statuses}
    return next((code for code in _SEVERITY if code in codes), ExitCode.OK)


HELP = """\
exit codes:
  0    every job completed (status, cancel, --no-wait: the request succeeded)
  1    a job failed
  2    usage error, or input the server refused (its message is printed)
  3    a job timed out, or --timeout ran out before the jobs were final
  4    a job was cancelled
  69   the server is unreachable (one line says why)
  70   a bug in jobcast itself (one line says what; please report it)
  130  interrupted (Ctrl-C)
With several jobs, the worst outcome wins: failed (1) > timed out (3) > cancelled (4).
"""
