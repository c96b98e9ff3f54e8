"""Who may do what: a request's token checked against its route's project and right.

The order is fixed, so that answers never depend on what exists: first the token
(401), then the project id's syntax (400), then the token's scope and rights (403),
and only then any lookup (an agent, a job) or limit.
"""

from __future__ import annotations

import math
import time

from starlette.requests import HTTPConnection

from . import validation
from .auth import Auth, Grant
from .errors import RateLimited, StoreUnavailable
from .limits import Limits


def client_address(conn: HTTPConnection) -> str:
    """The peer's address, as uvicorn reports it (a trusted proxy's X-Forwarded-For included)."""
    client = conn.scope.get("client")
    return str(client[0]) if client else "unknown"


def grant_of(conn: HTTPConnection) -> Grant:
    """The request's grant: 401 without a valid token, unless the server runs open."""
    auth: Auth = conn.state.auth
    offered = conn.scope.get("subprotocols", ()) if conn.scope["type"] == "websocket" else ()
    return auth.authenticate(conn.headers.get("authorization"), offered, time.time())


def require(conn: HTTPConnection, right: str) -> Grant:
    """The grant, if it has ``right`` (for routes that name no project)."""
    grant = grant_of(conn)
    grant.require(right)
    return grant


def project_access(conn: HTTPConnection, right: str) -> tuple[Grant, str]:
    """The grant and the path's project id, if the token has ``right`` on that project."""
    grant = grant_of(conn)
    project_id = validation.project_id(conn.path_params["project_id"])
    grant.require(right, project_id)
    return grant, project_id


def requester(conn: HTTPConnection, grant: Grant) -> str:
    """Whom the scheduler counts a job against: the token's subject, else (open mode, or no subject) the address."""
    return f"user:{grant.subject}" if grant.subject else f"address:{client_address(conn)}"


async def check_start(conn: HTTPConnection, grant: Grant) -> None:
    """Count a job start against its token, across every process sharing the store; 429 past the limit.
    Open mode has no tokens, and no limit."""
    if not grant.key:
        return
    limits: Limits = conn.state.limits
    try:
        wait = await conn.state.engine.store.take_start(grant.key, limits.starts.per_minute)
    except StoreUnavailable:
        wait = None  # the start itself will answer 503; until then this process's own limiter holds
    if wait is None:
        limits.starts.check(grant.key)
    elif wait > 0:
        raise RateLimited(limits.starts.per_minute, max(1, math.ceil(wait)))
