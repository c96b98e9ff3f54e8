"""Every error jobcast raises on purpose, with its data in attributes.

The tree::

    JobcastError                 code, message, http_status
    ├── InvalidInput             400 (bad project id, bad query parameter)
    ├── UnknownAgent             404
    ├── JobNotFound              404
    ├── NoSuchEndpoint           404 not_found, a WebSocket to a path no route serves
    ├── NothingToCancel          409
    ├── StoreUnavailable         503
    ├── QueueFull                503, --max-queued jobs are queued already (across the cluster on Redis)
    ├── BodyTooLarge             413 body_too_large, a request body over 64 KiB
    ├── IllegalTransition        500, a bug: the engine asked for a move the state machine forbids
    ├── StaleJob                 409, a compare-and-set lost: someone else changed the job first
    ├── Unauthorized             401, no valid token (the base of the three below)
    │   ├── AuthRequired         401 auth_required, the request carries no token
    │   ├── InvalidToken         401 invalid_token, forged, malformed or signed with another secret
    │   └── TokenExpired         401 token_expired
    ├── Forbidden                403 forbidden, a valid token without the right or the project
    ├── OriginNotAllowed         403 origin_not_allowed, a browser Origin that is neither ours nor listed
    ├── RateLimited              429 rate_limited, too many job starts (retry_after in seconds)
    └── TooManyConnections       429 too_many_connections, the client address holds its limit of streams
    ConfigError                  bad settings or agent spec; stops start-up, never reaches HTTP
    └── StoreInUse               another process owns the SQLite file
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
    #: the token expired while connected, or the client sent messages too fast
    POLICY_VIOLATION = 1008
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


class NoSuchEndpoint(JobcastError):
    code = "not_found"
    http_status = 404

    def __init__(self, path: str) -> None:
        shown = "".join(c if c.isprintable() else "?" for c in path[:200])
        super().__init__(f"no WebSocket endpoint at {shown!r}; follow a project at /ws/projects/{{project_id}}")
        self.path = path


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

    def __init__(self, message: str, *, maybe_applied: bool = True) -> None:
        super().__init__(message)
        #: False when nothing reached the store, so the write cannot land later
        self.maybe_applied = maybe_applied


class QueueFull(JobcastError):
    code = "queue_full"
    http_status = 503

    def __init__(self, limit: int) -> None:
        super().__init__(f"the queue already holds {limit} jobs; try again once some have started")
        self.limit = limit


class BodyTooLarge(JobcastError):
    code = "body_too_large"
    http_status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is over {limit // 1024} KiB")
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


class StoreInUse(ConfigError):
    """Another process holds the embedded store's file; a second owner would fail its jobs."""

    def __init__(self, path: str, owner: str) -> None:
        super().__init__(
            f"the SQLite store {path} is in use by {owner}. A SQLite store has one owner: stop that process, "
            "or run several processes on one port with --workers N and a redis:// store (docs/scaling.md)"
        )
        self.path = path
        self.owner = owner


class Unauthorized(JobcastError):
    """No valid token. Messages never repeat the token."""

    http_status = 401


class AuthRequired(Unauthorized):
    code = "auth_required"

    def __init__(self) -> None:
        super().__init__("this server needs a token: send 'Authorization: Bearer <token>' (never in the URL)")


class InvalidToken(Unauthorized):
    code = "invalid_token"

    def __init__(self) -> None:
        super().__init__("the token is not valid: malformed, altered, or signed with another secret")


class TokenExpired(Unauthorized):
    code = "token_expired"

    def __init__(self) -> None:
        super().__init__("the token has expired; ask for a new one")


class Forbidden(JobcastError):
    """A valid token that does not cover the request. The message never says whether a project exists."""

    code = "forbidden"
    http_status = 403


class OriginNotAllowed(JobcastError):
    code = "origin_not_allowed"
    http_status = 403

    def __init__(self) -> None:
        super().__init__("requests from this origin are not allowed here")


class RateLimited(JobcastError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(f"more than {limit} job starts a minute; try again in {retry_after} s")
        self.limit = limit
        self.retry_after = retry_after


class TooManyConnections(JobcastError):
    code = "too_many_connections"
    http_status = 429

    def __init__(self, limit: int) -> None:
        super().__init__(f"this client already holds {limit} open streams; close one first")
        self.limit = limit
