"""A real uvicorn server running the app in the test's own event loop.

Real sockets and jobcast's own uvicorn configuration, but in-process, so tests can
reach the engine and the class-level gates of the test agents.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import uvicorn
import websockets
from websockets.asyncio.client import ClientConnection

from jobcast.server.app import create_app
from jobcast.server.engine import Engine
from jobcast.server.hub import Hub
from jobcast.server.runner import graceful_server, uvicorn_config
from jobcast.server.settings import Settings
from tests.support import ALL_TEST_AGENTS, WAIT, eventually_async


@dataclasses.dataclass
class Live:
    port: int
    engine: Engine
    hub: Hub
    http: httpx.AsyncClient

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, project_id: str, **query: Any) -> str:
        params = "&".join(f"{key}={value}" for key, value in query.items())
        return f"ws://127.0.0.1:{self.port}/ws/projects/{project_id}" + (f"?{params}" if params else "")

    @contextlib.asynccontextmanager
    async def ws(self, project_id: str, **kwargs: Any) -> AsyncIterator[ClientConnection]:
        query = kwargs.pop("query", {})
        async with websockets.connect(self.ws_url(project_id, **query), open_timeout=WAIT, **kwargs) as connection:
            yield connection

    async def start(self, project_id: str, agent: str) -> dict[str, Any]:
        response = await self.http.post(f"/api/projects/{project_id}/agents/{agent}/refresh")
        assert response.status_code in (200, 202), response.text
        job: dict[str, Any] = response.json()["job"]
        return job

    async def wait_until(self, condition: Any) -> None:
        """Wait for an in-process condition that has no event of its own (a counter)."""
        await eventually_async(condition)


@contextlib.asynccontextmanager
async def live_server(**overrides: Any) -> AsyncIterator[Live]:
    values: dict[str, Any] = {
        "store": "memory://",
        "agents": ALL_TEST_AGENTS,
        "demo_seconds": 0.05,
        # Fan-out tests open hundreds of sockets from 127.0.0.1; tests/test_security.py tests the limit itself.
        "max_connections_per_client": 10_000,
        **overrides,
    }
    settings = Settings(**values)
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = graceful_server(uvicorn_config(app, settings, log_level="warning"))
    with sock:
        async with _serving(server, sock) as state, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            yield Live(port=port, engine=state["engine"], hub=state["hub"], http=http)


@contextlib.asynccontextmanager
async def _serving(server: uvicorn.Server, sock: socket.socket) -> AsyncIterator[dict[str, Any]]:
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve, [sock])
        await eventually_async(lambda: server.started, what="uvicorn started")  # a flag, not an event
        try:
            yield server.lifespan.state  # type: ignore[attr-defined]
        finally:
            server.should_exit = True
