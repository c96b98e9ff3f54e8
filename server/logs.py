"""Log hygiene: no token or secret in any line, uvicorn's access log included; one line per refusal.

jobcast reads tokens only from headers. But a client may put one in a URL by mistake,
percent-encoded or not, and uvicorn logs URLs with their query strings; and at ``--log-level debug`` the
websockets library logs every handshake header, ``Authorization`` and
``Sec-WebSocket-Protocol`` included. So every handler's records pass through
:class:`Redactor`, which blanks token-shaped strings, bearer values, authorization
headers, query parameters with credential-like names, and the secret itself.

Lines are text (one readable line) or, with ``--log-format json``, one JSON object per line
(:class:`JsonFormatter`); a job's lines carry its ids in both (:func:`job_fields`).

A refused WebSocket handshake is logged by jobcast (who, where, which code) and in
uvicorn's access log; the websockets library's own "connection rejected" line would
say it a third time, so :class:`DropRejections` drops it.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

REDACTED = "[redacted]"

_PATTERNS = (
    # a JWT (a base64url JSON header, "eyJ", then payload and signature), wherever it appears
    (re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),
    # a browser's token subprotocol, whatever its shape
    (re.compile(r"(jobcast\.bearer\.)[^,\s\"']+"), rf"\g<1>{REDACTED}"),
    # an Authorization header as a debug log prints it ("< authorization: Bearer ..."), and any bearer value
    (re.compile(r"(?i)(authorization:\s*).*"), rf"\g<1>{REDACTED}"),
    (re.compile(r"(?i)(\bbearer\s+)(?!realm=)[^\s\"',]+"), rf"\g<1>{REDACTED}"),
    # credential-like query parameters
    (
        re.compile(
            r"(?i)([?&;](?:access_token|token|auth|authorization|bearer|jwt|secret|api_key|apikey|key|password)=)"
            r"[^&#\s\"']*"
        ),
        rf"\g<1>{REDACTED}",
    ),
)
#: a run of URL-ish text with a percent-escape in it: a client may encode a token to slip it past the patterns
_ENCODED = re.compile(r"[^\s\"'<>]*%[0-9A-Fa-f]{2}[^\s\"'<>]*")
#: the loggers whose handlers get the filter (the root's handlers carry jobcast's own lines)
LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")
#: the text format of jobcast's own lines
TEXT_FORMAT = "%(levelname)s:     %(name)s: %(message)s"
#: what a line says about its job or client, when it names one (``extra=``); JSON lines carry them as keys
CONTEXT_FIELDS = ("project_id", "agent", "job_id", "attempt", "client")


def job_fields(job_id: str, project_id: str, agent: str, attempt: int) -> dict[str, Any]:
    """The ``extra=`` of a job's log line."""
    return {"job_id": job_id, "project_id": project_id, "agent": agent, "attempt": attempt}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: level, time (UTC), logger, message, and the context fields the line has."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "level": record.levelname.lower(),
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if "client" not in entry and record.name == "uvicorn.access" and isinstance(record.args, tuple):
            entry["client"] = record.args[0]  # uvicorn's access line: (client, method, path, version, status)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter | None:
    """The formatter every handler gets for ``--log-format``; None keeps each handler's own (text)."""
    return JsonFormatter() if log_format == "json" else None


def configure(level: str, log_format: str) -> None:
    """Set up the root logger of a jobcast process (``serve``, a ``--workers`` child or parent, ``worker``)."""
    logging.basicConfig(level=level.upper(), format=TEXT_FORMAT)
    chosen = formatter(log_format)
    if chosen is not None:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(chosen)


class Redactor(logging.Filter):
    """A handler filter that rewrites a record's text; it never drops a record."""

    def __init__(self, secret: str | None = None) -> None:
        super().__init__()
        self._secret = secret or None

    def redact(self, text: str) -> str:
        text = _ENCODED.sub(lambda run: self._redact_encoded(run[0]), text)
        return self._redact_plain(text)

    def _redact_plain(self, text: str) -> str:
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text.replace(self._secret, REDACTED) if self._secret else text

    def _redact_encoded(self, run: str) -> str:
        """A percent-encoded run (``?x=jc1%2E...``) is checked decoded, twice decoded included; kept if clean."""
        decoded = urllib.parse.unquote(urllib.parse.unquote(run))
        redacted = self._redact_plain(decoded)
        return run if redacted == decoded else redacted

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            # uvicorn's access formatter needs its arguments (client, method, path, version, status)
            record.args = tuple(self.redact(arg) if isinstance(arg, str) else arg for arg in record.args)
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True  # a broken record: logging reports it itself
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class DropRejections(logging.Filter):
    """Drops the websockets library's "connection rejected" line: jobcast has logged the refusal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith("connection rejected"))


class ThrottleFloods(logging.Filter):
    """Lines a hostile or broken client can cause at will pass at most ``per_minute`` times a minute each.

    The first line after a dropped stretch says how many were dropped. Every other record passes.
    """

    #: the format strings (``record.msg``) of such lines
    MESSAGES = frozenset(
        {
            "Invalid HTTP request received.",
            "Unsupported upgrade request.",
            "closing WebSocket from %s: a text frame that is not UTF-8 (1007)",
            "%d connections were waiting for their request headers (--max-pending-connections); "
            "closed the oldest to make room",
        }
    )

    def __init__(self, per_minute: int = 5, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.per_minute = per_minute
        self._clock = clock
        self._windows: dict[str, list[float | int]] = {}  # message: [window start, passed, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or record.msg not in self.MESSAGES:
            return True
        now = self._clock()
        window = self._windows.setdefault(record.msg, [now, 0, 0])
        if now - window[0] >= 60:
            window[0], window[1] = now, 0
        if window[1] >= self.per_minute:
            window[2] += 1
            return False
        window[1] += 1
        if window[2]:
            record.msg = f"{record.msg} (and {int(window[2])} more like it not logged)"
            window[2] = 0
        return True


#: the loggers whose own lines ThrottleFloods watches
FLOOD_LOGGERS = ("uvicorn.error", "jobcast.server.uvicorn_ws", "jobcast.server.connections")


def install(secret: str | None, loggers: Iterable[str] = LOGGERS, log_format: str = "text") -> None:
    """Add one Redactor to every handler of ``loggers``, DropRejections to uvicorn's error log, and
    ThrottleFloods to the loggers of lines a client can provoke; with ``log_format`` json, give every
    handler of ``loggers`` (uvicorn's included) the JSON formatter.

    Idempotent: running it again replaces the filters instead of stacking them.
    """
    redactor = Redactor(secret)
    chosen = formatter(log_format)
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            handler.filters = [f for f in handler.filters if not isinstance(f, Redactor)]
            handler.addFilter(redactor)
            if chosen is not None:
                handler.setFormatter(chosen)
    errors = logging.getLogger("uvicorn.error")
    errors.filters = [f for f in errors.filters if not isinstance(f, DropRejections)]
    errors.addFilter(DropRejections())
    throttle = ThrottleFloods()
    for name in FLOOD_LOGGERS:
        flood = logging.getLogger(name)
        flood.filters = [f for f in flood.filters if not isinstance(f, ThrottleFloods)]
        flood.addFilter(throttle)
