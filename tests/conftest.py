from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from jobcast.agents import Agent
from jobcast.server.app import create_app
from jobcast.server.engine import Engine
from jobcast.server.jobs import Job
from jobcast.server.settings import Settings
from jobcast.server.store import Store, store_for
from tests import agents as test_agents
from tests.support import ALL_TEST_AGENTS, wait_for_job


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _fresh_gates() -> Iterator[None]:
    test_agents.GatedAgent.reset()
    test_agents.StubbornAgent.reset()
    test_agents.DeafAgent.reset()
    test_agents.StreamingAgent.reset()
    test_agents.FlakyAgent.calls.clear()
    yield
    # Let any thread a test left blocked finish, so none outlives its test.
    test_agents.GatedAgent.gate.set()
    test_agents.StubbornAgent.gate.set()
    test_agents.DeafAgent.gate.set()
    test_agents.StreamingAgent.gate.set()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A redis-server of the suite's own, shared by the tests that only need keys of their own."""
    from tests.redis_server import redis_server

    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_server").url())
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = store_for(Settings(store=store_url))
    await opened.open()
    yield opened
    await opened.close()


@dataclass
class Running:
    """An app with its lifespan entered: an HTTP client on it, and its engine."""

    http: httpx.AsyncClient
    engine: Engine

    async def wait_for(self, job_id: str, condition: Callable[[Job], bool]) -> Job:
        return await wait_for_job(self.engine.store, job_id, condition)


@contextlib.asynccontextmanager
async def running_app(app: Starlette) -> AsyncIterator[Running]:
    """Enter the app's lifespan and talk to it in-process, as uvicorn would serve it."""
    async with app.router.lifespan_context(app) as state:
        lifespan_state: Mapping[str, Any] = state or {}

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            await app({**scope, "state": dict(lifespan_state)}, receive, send)

        # Like uvicorn, answer 500 and log, rather than raise into the test.
        transport = httpx.ASGITransport(app=with_state, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://jobcast.test") as http:
            yield Running(http=http, engine=lifespan_state["engine"])


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[..., contextlib.AbstractAsyncContextManager[Running]]:
    """Build and run an app with test agents; keyword arguments override settings."""

    def build(agents: Mapping[str, Agent] | None = None, **overrides: Any) -> Any:
        values: dict[str, Any] = {
            "store": "memory://",
            "agents": ALL_TEST_AGENTS,
            "demo_seconds": 0.05,
            **overrides,
        }
        return running_app(create_app(Settings(**values), agents=agents))

    return build
