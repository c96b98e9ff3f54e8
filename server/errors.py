"""Every error jobcast raises on purpose, with its data in attributes.

The tree::

    JobcastError                 code, message, http_status
    ├── InvalidInput             400 (bad project id, bad query parameter)
    ├── UnknownAgent             404
    ├── JobNotFound              404
    ├── NothingToCancel          409
    ├── StoreUnavailable         503
    ├── QueueFull                503, this process already holds --max-queued queued jobs
    ├── IllegalTransition        500, a bug: the engine asked for a move the state machine forbids
    └── StaleJob                 409, a compare-and-set lost: someone else changed the job first
    ConfigError                  bad settings or agent spec; stops start-up, never reaches HTTP
    CloseCode                    the WebSocket close codes jobcast sends

HTTP status codes are attached here, and mapped to responses in exactly one place,
:mod:`server.http_errors`.
"""

from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    """WebSocket close codes jobcast sends, and when."""

    #: a binary frame; the protocol is JSON text
    UNSUPPORTED_DATA = 1003
    #: an inbound message over 64 KiB
    MESSAGE_TOO_BIG = 1009
    #: the subscriber fell too far behind; resume from the cursor
    TRY_AGAIN_LATER = 1013


class JobcastError(Exception):
    code = "internal_error"
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidInput(JobcastError):
    http_status = 400

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class UnknownAgent(JobcastError):
    code = "unknown_agent"
    http_status = 404

    def __init__(self, agent: str) -> None:
        super().__init__(f"no agent named {agent!r}; see GET /api/agents")
        self.agent = agent


class JobNotFound(JobcastError):
    code = "job_not_found"
    http_status = 404


class NothingToCancel(JobcastError):
    code = "nothing_to_cancel"
    http_status = 409

    def __init__(self, project_id: str, agent: str) -> None:
        super().__init__(f"no queued or running {agent!r} job for project {project_id!r}")
        self.project_id = project_id
        self.agent = agent


class StoreUnavailable(JobcastError):
    code = "store_unavailable"
    http_status = 503


class QueueFull(JobcastError):
    code = "queue_full"
    http_status = 503

    def __init__(self, limit: int) -> None:
        super().__init__(f"this server already has {limit} queued jobs; try again once some have started")
        self.limit = limit


class IllegalTransition(JobcastError):
    code = "illegal_transition"
    http_status = 500

    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"a job cannot go from {current!r} to {target!r}")
        self.current = current
        self.target = target


class StaleJob(JobcastError):
    code = "stale_job"
    http_status = 409

    def __init__(self, job_id: str, expected: str) -> None:
        super().__init__(f"job {job_id} is no longer {expected!r}")
        self.job_id = job_id
        self.expected = expected


class ConfigError(Exception):
    """A setting or an agent spec is wrong; the message is one line for the operator."""
