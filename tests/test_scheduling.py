"""Scheduling through the API, on every store: priority, limits, fair share, places, and a second refresh.

Each test runs the app in-process on memory, SQLite and a real Redis (``store_url``), so
the class-level gates of the test agents are in reach. The same rules across real
processes are in tests/test_scheduling_cluster.py.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pytest

from jobcast.agents import Agent
from jobcast.server.auth import TokenSigner
from jobcast.server.jobs import Job
from tests.agents import FailingAgent, GatedAgent, LimitedGatedAgent, QuickAgent, SleepyAgent
from tests.conftest import Running
from tests.live import Live, live_server
from tests.support import WAIT, status_is

pytestmark = pytest.mark.anyio

MakeApp = Callable[..., contextlib.AbstractAsyncContextManager[Running]]
SECRET = "s" * 32


def agents(*made: Agent) -> dict[str, Agent]:
    return {agent.name: agent for agent in made}


AGENTS = agents(GatedAgent(), LimitedGatedAgent(), QuickAgent(), SleepyAgent(), FailingAgent())


def token(subject: str) -> dict[str, str]:
    minted = TokenSigner(SECRET).mint(["*"], ["read", "run"], 3600, time.time(), subject=subject)
    return {"authorization": f"Bearer {minted}"}


async def refresh(
    http: httpx.AsyncClient, project: str, agent: str, body: Any = None, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    response = await http.post(f"/api/projects/{project}/agents/{agent}/refresh", json=body, headers=headers)
    assert response.status_code in (200, 202), response.text
    job: dict[str, Any] = response.json()["job"]
    return job


async def gate_started(count: int = 1) -> None:
    for _ in range(count):
        assert await anyio.to_thread.run_sync(GatedAgent.started.acquire, True, WAIT)


async def wait_all(app: Running, jobs: list[dict[str, Any]], *statuses: str) -> list[Job]:
    return [await app.wait_for(job["job_id"], status_is(*statuses)) for job in jobs]


@contextlib.asynccontextmanager
async def scheduler_app(make_app: MakeApp, store_url: str, **overrides: Any) -> AsyncIterator[Running]:
    async with make_app(agents=AGENTS, store=store_url, **overrides) as app:
        yield app


async def test_priority_high_then_normal_then_low_whatever_the_order_they_came_in(
    make_app: MakeApp, store_url: str
) -> None:
    """With one thread held by a blocker, low, normal and high queued in that order start high, normal, low."""
    async with scheduler_app(make_app, store_url, threads=1) as app:
        blocker = await refresh(app.http, "block", "gated")
        await gate_started()
        low = await refresh(app.http, "low", "quick", {"priority": "low"})
        normal = await refresh(app.http, "normal", "quick", {"priority": "normal"})
        high = await refresh(app.http, "high", "quick", {"priority": "high"})
        assert (low["priority"], normal["priority"], high["priority"]) == ("low", "normal", "high")
        GatedAgent.gate.set()
        await wait_all(app, [blocker], "completed")
        done = await wait_all(app, [low, normal, high], "completed")
        started = {job.project_id: job.started_at for job in done}
        assert sorted(started, key=lambda project: started[project] or 0) == ["high", "normal", "low"]


async def test_the_project_limit_holds_a_job_queued_and_says_so(make_app: MakeApp, store_url: str) -> None:
    async with scheduler_app(make_app, store_url, threads=4, max_running_per_project=1) as app:
        first = await refresh(app.http, "p", "gated")
        await gate_started()
        second = await refresh(app.http, "p", "sleepy")
        other = await refresh(app.http, "q", "sleepy")  # another project is not held
        await wait_all(app, [other], "completed")
        record = (await app.http.get(f"/api/jobs/{second['job_id']}")).json()
        assert record["status"] == "queued"
        assert record["queue"] == {"position": 1, "waiting_for": "project_limit", "detail": "project limit 1 of 1"}
        GatedAgent.gate.set()
        first_done, second_done = await wait_all(app, [first, second], "completed")
        assert (second_done.started_at or 0) >= (first_done.finished_at or 0)


async def test_an_agents_max_running_holds_its_jobs_across_projects(make_app: MakeApp, store_url: str) -> None:
    async with scheduler_app(make_app, store_url, threads=4) as app:
        first = await refresh(app.http, "p1", "gated_limited")
        await gate_started()
        second = await refresh(app.http, "p2", "gated_limited")
        record = (await app.http.get(f"/api/jobs/{second['job_id']}")).json()
        assert record["queue"]["waiting_for"] == "agent_limit" and record["queue"]["detail"] == "agent limit 1 of 1"
        GatedAgent.gate.set()
        await wait_all(app, [first, second], "completed")


async def test_the_user_limit_counts_the_tokens_subject(make_app: MakeApp, store_url: str) -> None:
    """Alice's second job waits for her first; Bob's runs meanwhile. Each job records who started it."""
    async with scheduler_app(make_app, store_url, threads=4, max_running_per_user=1, secret=SECRET) as app:
        alice_first = await refresh(app.http, "p1", "gated", headers=token("alice"))
        await gate_started()
        alice_second = await refresh(app.http, "p2", "quick", headers=token("alice"))
        bob = await refresh(app.http, "p3", "quick", headers=token("bob"))
        (bob_done,) = await wait_all(app, [bob], "completed")
        assert bob_done.started_by == "bob" and alice_first["started_by"] == "alice"
        held = (await app.http.get(f"/api/jobs/{alice_second['job_id']}", headers=token("alice"))).json()
        assert held["status"] == "queued" and held["queue"]["waiting_for"] == "user_limit"
        GatedAgent.gate.set()
        await wait_all(app, [alice_first, alice_second], "completed")


async def test_in_open_mode_the_user_is_the_client_address_and_started_by_is_null(
    make_app: MakeApp, store_url: str
) -> None:
    async with scheduler_app(make_app, store_url, threads=4, max_running_per_user=1) as app:
        first = await refresh(app.http, "p1", "gated")
        await gate_started()
        second = await refresh(app.http, "p2", "quick")
        assert first["started_by"] is None
        held = (await app.http.get(f"/api/jobs/{second['job_id']}")).json()
        assert held["queue"]["waiting_for"] == "user_limit"
        GatedAgent.gate.set()
        await wait_all(app, [first, second], "completed")


async def test_fair_share_a_single_job_does_not_wait_behind_another_users_twenty(
    make_app: MakeApp, store_url: str
) -> None:
    """User A queues 20 jobs, then user B one: B's job starts before A's third."""
    async with scheduler_app(make_app, store_url, threads=1, secret=SECRET, starts_per_minute=100) as app:
        blocker = await refresh(app.http, "block", "gated", headers=token("carol"))
        await gate_started()
        mine = [await refresh(app.http, f"a{n}", "quick", headers=token("alice")) for n in range(20)]
        theirs = await refresh(app.http, "b0", "quick", headers=token("bob"))
        GatedAgent.gate.set()
        await wait_all(app, [blocker], "completed")
        done = await wait_all(app, [*mine, theirs], "completed")
        alice = sorted(job.started_at or 0 for job in done[:20])
        assert (done[20].started_at or 0) < alice[2]


async def test_max_queued_bounds_the_queue_but_a_join_still_succeeds(make_app: MakeApp, store_url: str) -> None:
    async with scheduler_app(make_app, store_url, threads=0, max_queued=2) as app:
        first = await refresh(app.http, "p1", "quick")
        await refresh(app.http, "p2", "quick")
        full = await app.http.post("/api/projects/p3/agents/quick/refresh")
        assert full.status_code == 503 and full.json()["error"]["code"] == "queue_full"
        again = await app.http.post("/api/projects/p1/agents/quick/refresh")
        assert again.status_code == 200 and again.json()["job"]["job_id"] == first["job_id"]


# -- what a second refresh does -----------------------------------------------------------------


async def at_once(app: Running, count: int, url: str, body: dict[str, str]) -> list[httpx.Response]:
    """``count`` requests racing each other."""
    answers: list[httpx.Response] = []

    async def ask() -> None:
        answers.append(await app.http.post(url, json=body))

    async with anyio.create_task_group() as requests:
        for _ in range(count):
            requests.start_soon(ask)
    return answers


async def test_if_active_queue_adds_one_follow_up_even_when_twenty_ask_at_once(
    make_app: MakeApp, store_url: str
) -> None:
    async with scheduler_app(make_app, store_url, threads=4) as app:
        head = await refresh(app.http, "p", "gated")
        await gate_started()
        answers = await at_once(app, 20, "/api/projects/p/agents/gated/refresh", {"if_active": "queue"})
        assert sorted(answer.status_code for answer in answers) == [200] * 19 + [202]
        follow_ups = {answer.json()["job"]["job_id"] for answer in answers}
        assert len(follow_ups) == 1 and head["job_id"] not in follow_ups
        follow_up = answers[0].json()["job"]
        assert follow_up["after"] == head["job_id"]
        record = (await app.http.get(f"/api/jobs/{follow_up['job_id']}")).json()
        assert record["queue"]["waiting_for"] == "previous_job"
        assert (await app.http.get("/api/projects/p/agents/gated/job")).json()["job_id"] == follow_up["job_id"]
        GatedAgent.gate.set()
        head_done, follow_done = await wait_all(app, [head, follow_up], "completed")
        assert (follow_done.started_at or 0) >= (head_done.finished_at or 0)


async def test_if_active_replace_cancels_the_active_job_and_twenty_racing_leave_one(
    make_app: MakeApp, store_url: str
) -> None:
    async with scheduler_app(make_app, store_url, threads=4) as app:
        head = await refresh(app.http, "p", "gated")
        await gate_started()
        answers = await at_once(app, 20, "/api/projects/p/agents/gated/refresh", {"if_active": "replace"})
        assert [answer.status_code for answer in answers] == [202] * 20
        (head_done,) = await wait_all(app, [head], "cancelled")
        new = [answer.json()["job"] for answer in answers]
        survivor_id = (await app.http.get("/api/projects/p/agents/gated/job")).json()["job_id"]
        replaced = [job for job in new if job["job_id"] != survivor_id]
        # Each replaced one ends cancelled, whether it was still queued or had started (and was stopped).
        ended = await wait_all(app, replaced, "cancelled", "completed")
        assert [job.status.value for job in ended] == ["cancelled"] * 19
        assert all(job.cancel_requested for job in ended)
        await gate_started()  # the survivor runs
        GatedAgent.gate.set()
        (survivor,) = await wait_all(app, [{"job_id": survivor_id}], "completed", "cancelled")
        assert survivor.status.value == "completed"
        assert (survivor.started_at or 0) >= (head_done.finished_at or 0)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"priority": "urgent"}', 400, "invalid_priority"),
        (b'{"priority": 3}', 400, "invalid_priority"),
        (b'{"if_active": "join"}', 400, "invalid_if_active"),
        (b'{"priority": "high"', 400, "invalid_json"),
        (b"\xff\xfe", 400, "invalid_json"),
        (b'["high"]', 400, "invalid_body"),
        (b'{"priorty": "high"}', 400, "unknown_field"),
        (b'{"priority": "' + b"h" * 70_000 + b'"}', 413, "body_too_large"),
    ],
    ids=["unknown-priority", "number-priority", "unknown-if-active", "not-json", "not-utf8", "not-object",
         "misspelt-field", "over-64-KiB"],
)  # fmt: skip
async def test_a_bad_refresh_body_gets_a_clear_error_and_queues_nothing(
    make_app: MakeApp, body: bytes, status: int, code: str
) -> None:
    async with make_app(agents=AGENTS) as app:
        response = await app.http.post(
            "/api/projects/p/agents/quick/refresh", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == status
        error = response.json()["error"]
        assert error["code"] == code and error["message"] and "Traceback" not in response.text
        assert await app.engine.store.active_jobs() == [] and await app.engine.store.project_ids() == []


async def test_an_over_long_chunked_body_is_refused_without_reading_it_all(make_app: MakeApp) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b" " * 4096

    async with make_app(agents=AGENTS) as app:
        response = await app.http.post("/api/projects/p/agents/quick/refresh", content=chunks())
        assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


async def test_an_empty_body_is_the_defaults(make_app: MakeApp) -> None:
    async with make_app(agents=AGENTS) as app:
        job = await refresh(app.http, "p", "quick")
        assert (job["priority"], job["after"]) == ("normal", None)


# -- queue messages on every transport ----------------------------------------------------------


async def _queue_three(live: Live) -> list[dict[str, Any]]:
    """One thread held by a blocker in another project, then three jobs queued in project q."""
    await refresh(live.http, "block", "gated")
    await gate_started()
    return [await refresh(live.http, "q", agent) for agent in ("quick", "sleepy", "failing")]


def _positions(messages: list[dict[str, Any]]) -> dict[str, int]:
    latest: dict[str, int] = {}
    for message in messages:
        if message.get("type") == "queue":
            latest[message["job_id"]] = message["position"]
    return latest


async def _ws_positions(live: Live, until: Callable[[dict[str, int]], bool]) -> dict[str, int]:
    seen: list[dict[str, Any]] = []
    async with live.ws("q") as ws:
        with anyio.fail_after(WAIT):
            while not until(_positions(seen)):
                seen.append(json.loads(await ws.recv()))
    return _positions(seen)


async def _sse_positions(live: Live, until: Callable[[dict[str, int]], bool]) -> dict[str, int]:
    seen: list[dict[str, Any]] = []
    async with live.http.stream("GET", "/api/projects/q/events/stream", timeout=WAIT) as stream:
        with anyio.fail_after(WAIT):
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                if until(_positions(seen)):
                    break
    return _positions(seen)


async def _poll_positions(live: Live, until: Callable[[dict[str, int]], bool]) -> dict[str, int]:
    cursor: dict[str, Any] = {}
    seen: list[dict[str, Any]] = []
    with anyio.fail_after(WAIT):
        while not until(_positions(seen)):
            reply = (await live.http.get("/api/projects/q/events", params={**cursor, "wait": 5}, timeout=WAIT)).json()
            cursor = {"epoch": reply["epoch"], "after": reply["seq"]}
            seen.extend(reply["queue"])
    return _positions(seen)


@pytest.mark.parametrize("transport", ["websocket", "sse", "long-poll"])
async def test_queue_messages_carry_each_jobs_place_as_the_queue_drains(transport: str) -> None:
    read = {"websocket": _ws_positions, "sse": _sse_positions, "long-poll": _poll_positions}[transport]
    async with live_server(agents=list(AGENTS_SPECS), threads=1) as live:
        quick, sleepy, failing = await _queue_three(live)
        ids = [quick["job_id"], sleepy["job_id"], failing["job_id"]]
        first = await read(live, lambda places: [places.get(job_id) for job_id in ids] == [1, 2, 3])
        assert [first[job_id] for job_id in ids] == [1, 2, 3]
        cancelled = await live.http.post("/api/projects/q/agents/quick/cancel")
        assert cancelled.status_code == 202
        after = await read(live, lambda places: [places.get(job_id) for job_id in ids[1:]] == [1, 2])
        assert [after[job_id] for job_id in ids[1:]] == [1, 2]
        GatedAgent.gate.set()


AGENTS_SPECS = (
    "tests.agents:GatedAgent",
    "tests.agents:QuickAgent",
    "tests.agents:SleepyAgent",
    "tests.agents:FailingAgent",
)
