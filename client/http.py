"""The HTTP actions (start, cancel, status) of :class:`JobcastClient`.

httpx's errors never leave this module: a transport failure becomes
:class:`ServerUnreachable`, an error answer :class:`ServerRefused` (:mod:`.answers`).
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any

import httpx

from .answers import Record, answer, auth_headers, describe
from .endpoint import Endpoint, quote
from .errors import ServerUnreachable
from .subscribe import Subscription, subscribe

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

    async def start(
        self, project_id: str, agent: str, *, priority: str | None = None, if_active: str | None = None
    ) -> StartedJob:
        """Start the agent's job on the project, or join the one already queued or running.

        ``priority``: ``high``, ``normal`` (the server's default) or ``low``. ``if_active``: what to do
        when the agent has an active job: ``attach`` (the default), ``replace`` or ``queue``.
        """
        options = {"priority": priority, "if_active": if_active}
        body = await self._request(
            "POST",
            self.endpoint.project(project_id, f"/agents/{quote(agent)}/refresh"),
            {key: value for key, value in options.items() if value is not None} or None,
        )
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
        return subscribe(self.endpoint.base, project_id, **{"token": self._token, **options})

    async def _request(self, method: str, path: str, body: Record | None = None) -> Record:
        try:
            response = await self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ServerUnreachable(self.endpoint.base, describe(exc)) from exc
        return answer(response, f"{method} {path}")
