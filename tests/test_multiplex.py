"""One WebSocket for many projects (``/ws``): subscribe, unsubscribe, resume per project, tokens per project."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.guarded import SECRET, Tokens, bearer, ws_answer
from tests.live import Live, live_server
from tests.redis_server import redis_server
from tests.servers import jobcast_server
from tests.support import WAIT

pytestmark = pytest.mark.anyio


async def send(socket: ClientConnection, **message: Any) -> None:
    await socket.send(json.dumps(message))


async def next_message(socket: ClientConnection, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The next message that matches, skipping the rest (presence, progress)."""
    with anyio.fail_after(WAIT):
        while True:
            message: dict[str, Any] = json.loads(await socket.recv())
            if predicate(message):
                return message


async def messages_until(socket: ClientConnection, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    seen = []
    with anyio.fail_after(WAIT):
        while True:
            seen.append(json.loads(await socket.recv()))
            if predicate(seen[-1]):
                return seen


def of_type(kind: str, project_id: str | None = None) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == kind and (project_id is None or m.get("project_id") == project_id)


def final_of(project_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == "job" and m["project_id"] == project_id and m["job"]["status"] == "completed"


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    async with live_server() as server:
        yield server


async def multiplexed(live: Live, **options: Any) -> ClientConnection:
    return await websockets.connect(f"ws://127.0.0.1:{live.port}/ws", open_timeout=WAIT, **options)


async def test_one_socket_follows_two_projects_and_every_message_names_its_project(live: Live) -> None:
    async with await multiplexed(live) as socket:
        await send(socket, type="subscribe", project_id="acme")
        await send(socket, type="subscribe", project_id="beta")
        snapshots = [await next_message(socket, of_type("snapshot")) for _ in range(2)]
        assert {s["project_id"] for s in snapshots} == {"acme", "beta"}
        await live.start("beta", "quick")
        seen = await messages_until(socket, final_of("beta"))
        await live.start("acme", "quick")
        seen += await messages_until(socket, final_of("acme"))
        assert all("project_id" in message for message in seen), seen
        jobs = [(m["project_id"], m["job"]["status"]) for m in seen if m["type"] == "job"]
        assert jobs == [("beta", s) for s in ("queued", "running", "completed")] + [
            ("acme", s) for s in ("queued", "running", "completed")
        ]


async def test_each_project_resumes_from_its_own_cursor(live: Live) -> None:
    async with await multiplexed(live) as socket:
        await send(socket, type="subscribe", project_id="acme")
        opening = await next_message(socket, of_type("snapshot", "acme"))
        await live.start("acme", "quick")
        last = await next_message(socket, final_of("acme"))
    epoch, seen_up_to = opening["epoch"], last["seq"]
    await live.start("acme", "quick")  # two jobs while away: acme's cursor replays them
    job = await live.start("acme", "quick")
    async with await multiplexed(live) as socket:
        await send(socket, type="subscribe", project_id="acme", epoch=epoch, after=seen_up_to)
        await send(socket, type="subscribe", project_id="beta", epoch="some-other-epoch", after=3)
        welcome = await next_message(socket, of_type("welcome", "acme"))
        assert welcome["recovered"] is True
        replayed = await messages_until(socket, lambda m: m["type"] == "job" and m["job"]["job_id"] == job["job_id"])
        replayed_acme = [m for m in replayed if m["type"] == "job" and m["project_id"] == "acme"]
        assert [m["seq"] for m in replayed_acme] == list(range(seen_up_to + 1, replayed_acme[-1]["seq"] + 1))
        beta = await next_message(socket, of_type("snapshot", "beta"))
        assert (beta["recovered"], beta["reason"]) == (False, "the cursor is from another epoch")


async def test_unsubscribe_stops_one_project_only(live: Live) -> None:
    async with await multiplexed(live) as socket:
        for project_id in ("acme", "beta"):
            await send(socket, type="subscribe", project_id=project_id)
            await next_message(socket, of_type("snapshot", project_id))
        await send(socket, type="unsubscribe", project_id="acme")
        assert await next_message(socket, of_type("unsubscribed")) == {"type": "unsubscribed", "project_id": "acme"}
        await live.start("acme", "quick")
        await live.start("beta", "quick")
        seen = await messages_until(socket, final_of("beta"))
        assert [m for m in seen if m.get("project_id") == "acme"] == []
        await send(socket, type="unsubscribe", project_id="acme")
        error = await next_message(socket, of_type("error"))
        assert (error["code"], error["project_id"]) == ("not_subscribed", "acme")


async def test_bad_messages_get_errors_and_the_socket_keeps_streaming(live: Live) -> None:
    async with await multiplexed(live) as socket:
        await send(socket, type="subscribe", project_id="acme")
        await next_message(socket, of_type("snapshot", "acme"))
        cases: list[tuple[str, str]] = [
            ("not json", "bad_json"),
            ("[1]", "bad_message"),
            ('{"project_id": "acme"}', "missing_type"),
            ('{"type": "dance"}', "unknown_type"),
            ('{"type": "subscribe"}', "invalid_project_id"),
            ('{"type": "subscribe", "project_id": "no spaces"}', "invalid_project_id"),
            ('{"type": "subscribe", "project_id": 7}', "invalid_project_id"),
            ('{"type": "subscribe", "project_id": "acme"}', "already_subscribed"),
            ('{"type": "unsubscribe", "project_id": "beta"}', "not_subscribed"),
        ]
        for text, code in cases:
            await socket.send(text)
            error = await next_message(socket, of_type("error"))
            assert (error["code"], bool(error["message"])) == (code, True), text
        await send(socket, type="ping")
        assert await next_message(socket, lambda m: m["type"] in ("pong", "error")) == {"type": "pong"}
        await live.start("acme", "quick")
        await next_message(socket, final_of("acme"))


async def test_the_subscription_limit_answers_an_error() -> None:
    async with live_server(max_subscriptions=2) as live, await multiplexed(live) as socket:
        for project_id in ("a", "b"):
            await send(socket, type="subscribe", project_id=project_id)
            await next_message(socket, of_type("snapshot", project_id))
        await send(socket, type="subscribe", project_id="c")
        error = await next_message(socket, of_type("error"))
        assert (error["code"], error["project_id"]) == ("too_many_subscriptions", "c")
        assert "2" in error["message"]
        await send(socket, type="unsubscribe", project_id="a")
        await next_message(socket, of_type("unsubscribed"))
        await send(socket, type="subscribe", project_id="c")
        assert (await next_message(socket, of_type("snapshot")))["project_id"] == "c"


async def test_tokens_are_checked_per_project() -> None:
    tokens = Tokens()
    async with live_server(secret=SECRET) as live:
        assert (await ws_answer(live.url, "/ws", {})).status == 401
        forged = await ws_answer(live.url, "/ws", bearer(tokens.forged()))
        assert (forged.status, forged.code) == (401, "invalid_token")
        token = tokens.mint(("acme", "beta"), ("read",))
        async with await multiplexed(live, additional_headers=bearer(token)) as socket:
            await send(socket, type="subscribe", project_id="acme")
            await next_message(socket, of_type("snapshot", "acme"))
            await send(socket, type="subscribe", project_id="secret")
            refused = await next_message(socket, of_type("error"))
            assert (refused["code"], refused["project_id"]) == ("forbidden", "secret")
            await send(socket, type="subscribe", project_id="beta")
            await next_message(socket, of_type("snapshot", "beta"))
            live.http.headers.update(bearer(tokens.mint(("*",))))
            await live.start("secret", "quick")
            await live.start("beta", "quick")
            seen = await messages_until(socket, final_of("beta"))
            assert not [m for m in seen if m.get("project_id") == "secret"]


async def test_a_token_without_read_is_refused_at_the_handshake() -> None:
    async with live_server(secret=SECRET) as live:
        answer = await ws_answer(live.url, "/ws", bearer(Tokens().mint(("acme",), ("run",))))
        assert (answer.status, answer.code) == (403, "forbidden")


async def test_a_redis_restart_ends_one_subscription_and_it_resumes_with_a_snapshot(tmp_path: Path) -> None:
    """While Redis is away a subscribe answers store_unavailable; once Redis is back (empty, a new epoch) the
    subscription ends with subscription_ended, the socket stays open, and subscribing again gives a snapshot."""
    with redis_server(tmp_path / "redis") as own_redis:
        args = ["--store", own_redis.url("restart"), "--agent", "tests.agents:QuickAgent", "--demo-seconds", "0.05"]
        with jobcast_server(args, tmp_path / "server.log") as server:
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=WAIT) as socket:
                await send(socket, type="subscribe", project_id="outage")
                first = await next_message(socket, of_type("snapshot", "outage"))
                own_redis.stop()
                await send(socket, type="subscribe", project_id="elsewhere")
                refused = await next_message(socket, of_type("error"))
                assert (refused["code"], refused["project_id"]) == ("store_unavailable", "elsewhere")
                own_redis.start()
                ended = await next_message(socket, of_type("error"))
                assert (ended["code"], ended["project_id"]) == ("subscription_ended", "outage")
                await send(socket, type="subscribe", project_id="outage", epoch=first["epoch"], after=first["seq"])
                again = await next_message(socket, of_type("snapshot", "outage"))
                assert (again["recovered"], again["epoch"] != first["epoch"]) == (False, True)


async def test_a_socket_subscribes_all_its_projects_at_once() -> None:
    """More subscribes in a burst than --ws-messages-per-second allows other messages: a page with many projects."""
    async with live_server(ws_messages_per_second=5, max_subscriptions=40) as live, await multiplexed(live) as socket:
        for index in range(40):
            await send(socket, type="subscribe", project_id=f"p{index}")
        snapshots = {(await next_message(socket, of_type("snapshot")))["project_id"] for _ in range(40)}
        assert snapshots == {f"p{index}" for index in range(40)}
