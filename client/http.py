"""The HTTP actions (start, cancel, status), and the translation of HTTP errors.

httpx's errors never leave this module: a transport failure becomes
:class:`ServerUnreachable`, an error answer :class:`ServerRefused`.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from .endpoint import Endpoint, quote
from .errors import ProtocolError, ServerRefused, ServerUnreachable

if TYPE_CHECKING:
    from .subscribe import Subscription

Record = dict[str, Any]

#: seconds to wait for a connection and for an answer to an action
DEFAULT_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True)
class StartedJob:
    """What ``refresh`` answered: the job, and whether it was already queued or running."""

    agent: str
    job: Record
    deduplicated: bool


class JobcastClient:
    """The HTTP API of one server. ``async with JobcastClient(url) as client: ...``"""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.endpoint = Endpoint.parse(url)
        self._token = token
        self._http = httpx.AsyncClient(
            base_url=self.endpoint.base, timeout=timeout, transport=transport, headers=auth_headers(token)
        )

    def __repr__(self) -> str:
        return f"JobcastClient({self.endpoint.base!r})"

    async def __aenter__(self) -> JobcastClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def start(self, project_id: str, agent: str) -> StartedJob:
        """Start the agent's job on the project, or join the one already queued or running."""
        body = await self._request("POST", self.endpoint.project(project_id, f"/agents/{quote(agent)}/refresh"))
        return StartedJob(agent, body["job"], bool(body.get("deduplicated")))

    async def cancel(self, project_id: str, agent: str) -> Record:
        """Cancel the agent's queued or running job; ServerRefused ``nothing_to_cancel`` if none."""
        body = await self._request("POST", self.endpoint.project(project_id, f"/agents/{quote(agent)}/cancel"))
        job: Record = body["job"]
        return job

    async def status(self, project_id: str) -> Record:
        """The project's state: each agent's job and last result, and the cursor."""
        return await self._request("GET", self.endpoint.project(project_id))

    async def job(self, job_id: str) -> Record:
        """One job by id, in any state."""
        return await self._request("GET", f"/api/jobs/{quote(job_id)}")

    async def agents(self) -> list[Record]:
        """The configured agents and their timeouts."""
        agents: list[Record] = (await self._request("GET", "/api/agents"))["agents"]
        return agents

    def subscribe(self, project_id: str, **options: Any) -> AbstractAsyncContextManager[Subscription]:
        """:func:`client.subscribe` on this client's server; the same options."""
        from .subscribe import subscribe

        return subscribe(self.endpoint.base, project_id, **{"token": self._token, **options})

    async def _request(self, method: str, path: str) -> Record:
        try:
            response = await self._http.request(method, path)
        except httpx.HTTPError as exc:
            raise ServerUnreachable(self.endpoint.base, describe(exc)) from exc
        if response.status_code >= 400:
            raise refusal(response.status_code, response.content, response.reason_phrase)
        return json_object(response.content, f"{method} {path}")


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
