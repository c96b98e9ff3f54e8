"""The one place where exceptions become HTTP responses: JSON, a stable code, no traceback.

Refused WebSocket handshakes get the same responses. Refusals (401, 403, 429, 503
queue_full) are logged here, once each, without headers or query strings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope
from starlette.websockets import WebSocket

from .errors import (
    Forbidden,
    JobcastError,
    OriginNotAllowed,
    QueueFull,
    RateLimited,
    TooManyConnections,
    Unauthorized,
)

logger = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "too_many_requests",
    503: "unavailable",
}


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


#: refusals worth a line in the server log: one line per refused request or handshake
_REFUSALS = (Unauthorized, Forbidden, OriginNotAllowed, RateLimited, TooManyConnections, QueueFull)


def response_for(exc: JobcastError) -> JSONResponse:
    """The HTTP answer to a deliberate error, for routes and refused WebSocket handshakes alike."""
    return JSONResponse(exc.to_dict(), status_code=exc.http_status, headers=_headers(exc))


def _headers(exc: JobcastError) -> dict[str, str]:
    if isinstance(exc, RateLimited):
        return {"retry-after": str(exc.retry_after)}
    if isinstance(exc, Unauthorized):
        error = "" if exc.code == "auth_required" else ', error="invalid_token"'
        return {"www-authenticate": f'Bearer realm="jobcast"{error}'}
    return {}


def log_refusal(scope: Scope, exc: JobcastError) -> None:
    """One warning per refusal: who, what, which code. Never a header, a query string or a token."""
    if isinstance(exc, _REFUSALS):
        client = scope.get("client")
        address = f"{client[0]}:{client[1]}" if client else "unknown"
        kind = "WebSocket" if scope["type"] == "websocket" else scope.get("method", "HTTP")
        path = "".join(c if c.isprintable() else "?" for c in str(scope.get("path", ""))[:200])
        logger.warning("refused %s %s from %s: %d %s", kind, path, address, exc.http_status, exc.code)
        metrics = scope.get("state", {}).get("metrics")
        if metrics is not None:
            metrics.refused("websocket" if scope["type"] == "websocket" else "http", exc.code)


async def refuse_handshake(websocket: WebSocket, exc: JobcastError) -> None:
    """Answer a WebSocket handshake with the error's HTTP response instead of accepting it."""
    log_refusal(websocket.scope, exc)
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response_for(exc))
    else:  # a server without the denial extension: a bare 403
        await websocket.close(1008)


async def jobcast_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, JobcastError)
    log_refusal(request.scope, exc)
    return response_for(exc)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if exc.status_code != 404 else f"no route for {request.url.path}"
    return error_response(exc.status_code, code, str(message), headers=exc.headers)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "jobcast hit an internal error; the server log has details")


EXCEPTION_HANDLERS = {
    JobcastError: jobcast_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
