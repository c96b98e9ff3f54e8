"""Presence: each project's watchers over every transport and process, pushed as they change."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.sync.client import connect

from jobcast.server.presence import POLL_GRACE, Pollers
from tests.live import Live, live_server
from tests.redis_server import RedisServer
from tests.servers import jobcast_server
from tests.support import WAIT, eventually, eventually_async


async def watching_pushed(socket: ClientConnection, count: int) -> dict[str, Any]:
    """Read the socket until a presence message says ``count``."""
    with anyio.fail_after(WAIT):
        while True:
            message: dict[str, Any] = json.loads(await socket.recv())
            if message["type"] == "presence" and message["watching"] == count:
                return message


@contextlib.asynccontextmanager
async def sse_stream(live: Live, project_id: str) -> AsyncIterator[list[dict[str, Any]]]:
    """An open SSE stream; the list fills with the presence events it carries."""
    seen: list[dict[str, Any]] = []
    opened = anyio.Event()

    async def read() -> None:
        async with live.http.stream("GET", f"/api/projects/{project_id}/events/stream") as response:
            opened.set()
            async for line in response.aiter_lines():
                if line.startswith("data: ") and '"presence"' in line:
                    seen.append(json.loads(line[len("data: ") :]))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(read)
        with anyio.fail_after(WAIT):
            await opened.wait()
        yield seen
        tasks.cancel_scope.cancel()


@pytest.mark.anyio
async def test_watchers_of_every_transport_are_counted_and_pushed() -> None:
    async with live_server() as live, websockets.connect(live.ws_url("acme"), open_timeout=WAIT) as socket:
        first = await watching_pushed(socket, 1)
        assert first == {"type": "presence", "project_id": "acme", "watching": 1}
        async with sse_stream(live, "acme") as sse_presence:
            await watching_pushed(socket, 2)
            status = (await live.http.get("/api/projects/acme")).json()
            poll_answers: list[dict[str, Any]] = []
            async with anyio.create_task_group() as polls:

                async def long_poll() -> None:
                    query = {"epoch": status["epoch"], "after": status["seq"], "wait": 25, "client": "poller-1"}
                    answer = await live.http.get("/api/projects/acme/events", params=query, timeout=WAIT)
                    poll_answers.append(answer.json())

                polls.start_soon(long_poll)
                await watching_pushed(socket, 3)  # the waiting poll counts; the news wakes it
            assert poll_answers[0]["watching"] == 3
            async with websockets.connect(f"ws://127.0.0.1:{live.port}/ws", open_timeout=WAIT) as multiplexed:
                await multiplexed.send(json.dumps({"type": "subscribe", "project_id": "acme"}))
                assert (await watching_pushed(multiplexed, 4))["project_id"] == "acme"
                await watching_pushed(socket, 4)
                assert (await live.http.get("/api/projects/acme")).json()["watching"] == 4
            await watching_pushed(socket, 3)
            await eventually_async(lambda: any(e["watching"] == 4 for e in sse_presence), what="presence over SSE")
        await watching_pushed(socket, 2)  # the poller still counts for a while after its answer
        assert (await live.http.get("/api/projects/beta")).json()["watching"] == 0


def test_a_long_poll_client_counts_while_it_waits_and_for_a_grace_after() -> None:
    now = [100.0]
    pollers = Pollers(clock=lambda: now[0])
    with pollers.polling("acme", "one"), pollers.polling("acme", "one"), pollers.polling("beta", "two"):
        assert pollers.counts() == {"acme": 1, "beta": 1}  # one client, however many polls
        now[0] += POLL_GRACE * 10
        assert pollers.counts() == {"acme": 1, "beta": 1}  # waiting, however long
    now[0] += POLL_GRACE - 1
    assert pollers.counts() == {"acme": 1, "beta": 1}
    now[0] += 2
    assert pollers.counts() == {}


@contextlib.contextmanager
def presence_socket(port: int, project_id: str) -> Iterator[Any]:
    with connect(f"ws://127.0.0.1:{port}/ws/projects/{project_id}", open_timeout=WAIT) as socket:
        yield socket


def wait_watching(socket: Any, count: int) -> None:
    """Read the socket until a presence message says ``count`` (each read waits at most WAIT)."""
    while True:
        message = json.loads(socket.recv(timeout=WAIT))
        if message["type"] == "presence" and message["watching"] == count:
            return


def test_presence_adds_up_the_watchers_of_two_processes(tmp_path: Path, redis_server: RedisServer) -> None:
    args = ["--store", redis_server.url(), "--agent", "tests.agents:QuickAgent"]
    with (
        jobcast_server(args, tmp_path / "a.log") as first,
        jobcast_server(args, tmp_path / "b.log") as second,
        presence_socket(first.port, "acme") as watcher,
    ):
        wait_watching(watcher, 1)
        sse = f"{second.url}/api/projects/acme/events/stream"
        with presence_socket(second.port, "acme"), httpx.stream("GET", sse, timeout=WAIT) as stream:
            assert stream.status_code == 200
            wait_watching(watcher, 3)

            def watching_through(url: str) -> int:
                return int(httpx.get(f"{url}/api/projects/acme", timeout=WAIT).json()["watching"])

            eventually(lambda: watching_through(second.url) == 3, what="the second process counting the first's")
            assert watching_through(first.url) == 3
        wait_watching(watcher, 1)
