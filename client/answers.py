"""How the client reads the server's answers and sends its token, for the HTTP actions and every transport.

The lowest layer of the client's I/O: :mod:`.http`, :mod:`.sync`, :mod:`.subscribe` and
:mod:`.transports` all use it, and it uses none of them.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any

import httpx

from .errors import ProtocolError, ServerRefused

Record = dict[str, Any]


def auth_headers(token: str | None) -> dict[str, str]:
    """The Authorization header for ``token``; none without one."""
    return {"authorization": f"Bearer {token}"} if token else {}


def refusal(status: int, body: bytes, reason: str = "") -> ServerRefused:
    """The server's JSON error; or, when the body is not one (a proxy's page), a stand-in."""
    try:
        error = json.loads(body)["error"]
        return ServerRefused(str(error["code"]), str(error["message"]), status)
    except (ValueError, KeyError, TypeError):
        text = f"HTTP {status} {reason}".strip()
        return ServerRefused(f"http_{status}", f"{text}, not a jobcast error (a proxy, or not jobcast?)", status)


def answer(response: httpx.Response, what: str) -> Record:
    """The JSON object of a successful answer to ``what``; the server's refusal, raised, for an error answer."""
    if response.status_code >= 400:
        raise refusal(response.status_code, response.content, response.reason_phrase)
    return json_object(response.content, what)


def json_object(body: bytes, what: str) -> Record:
    try:
        value = json.loads(body)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} did not answer a JSON object: is this a jobcast server?")
    return value


def describe(error: BaseException) -> str:
    """A short reason for a network error, for one line: the system's words when there are some."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, httpx.TimeoutException | TimeoutError):
            return "timed out"
        if isinstance(seen, OSError) and seen.errno is not None and seen.errno in errno.errorcode:
            return os.strerror(seen.errno).lower()
        seen = seen.__cause__ or seen.__context__
    return str(error).strip() or type(error).__name__
