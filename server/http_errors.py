"""The one place where exceptions become HTTP responses: JSON, a stable code, no traceback."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .errors import JobcastError

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


async def jobcast_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, JobcastError)
    return JSONResponse(exc.to_dict(), status_code=exc.http_status)


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
