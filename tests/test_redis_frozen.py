"""A frozen Redis (SIGSTOP: a hung primary, a long fork, a network black hole) costs 503s, never hangs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import websockets

from jobcast.server.api import READY_TIMEOUT
from jobcast.server.store.redis_store import CALL_DEADLINE
from tests.agents import GatedAgent
from tests.live import Live, live_server
from tests.redis_server import RedisServer, redis_server
from tests.support import WAIT, eventually_async, receive

pytestmark = pytest.mark.anyio

#: What "within seconds" means here: the store's deadline, and room for two busy cores.
PROMPT = CALL_DEADLINE + 2.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server


async def timed_get(live: Live, path: str, answers: list[tuple[int, float]]) -> None:
    began = time.monotonic()
    response = await live.http.get(path, timeout=WAIT * 3)
    answers.append((response.status_code, time.monotonic() - began))


async def wave(live: Live, paths: list[str]) -> list[tuple[int, float]]:
    """Send every request at once; each answer's status and how long it took."""
    answers: list[tuple[int, float]] = []
    async with anyio.create_task_group() as tasks:
        for path in paths:
            tasks.start_soon(timed_get, live, path, answers)
    return answers


async def test_requests_during_a_freeze_get_503_promptly_and_no_convoy_forms(own_redis: RedisServer) -> None:
    """Every request during a freeze answers 503 within seconds, the later ones too; all works again after."""
    async with live_server(store=own_redis.url()) as live:
        job = await live.start("p1", "gated")
        paths = [f"/api/projects/p{n}" for n in range(8)] + [f"/api/jobs/{job['job_id']}", "/api/projects"]
        with own_redis.frozen():
            first = await wave(live, paths)
            later = await wave(live, paths)  # sent after the first wave failed: nothing may queue behind it
            refused = await live.http.post("/api/projects/p2/agents/quick/refresh", timeout=WAIT * 3)
            ready = await wave(live, ["/readyz"])
            alive = await live.http.get("/healthz")
        assert all(status == 503 for status, _ in first + later), first + later
        assert max(seconds for _, seconds in first + later) < PROMPT, first + later
        # Once Redis is known not to answer, one call in each probe interval asks it; the rest fail at once.
        assert sorted(seconds for _, seconds in later)[-2] < 1.0, later
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "store_unavailable"
        assert ready[0][0] == 503 and ready[0][1] < READY_TIMEOUT + 1.0
        assert alive.status_code == 200  # liveness: the process is fine, only its store is not

        await wait_until_ready(live)
        GatedAgent.gate.set()
        assert (await wait_until_final(live, job["job_id"]))["status"] == "completed"
        assert (await live.http.post("/api/projects/p3/agents/quick/refresh")).status_code == 202


async def wait_until_ready(live: Live) -> None:
    async def ready() -> bool:  # polling as a load balancer does
        return (await live.http.get("/readyz")).status_code == 200

    await eventually_async(ready, what="/readyz 200")


async def test_a_websocket_opened_during_a_freeze_is_told_and_closed_promptly(own_redis: RedisServer) -> None:
    """The socket gets a store_unavailable error then 1013 within seconds; after the freeze it gets its snapshot."""
    async with live_server(store=own_redis.url()) as live:
        with own_redis.frozen():
            began = time.monotonic()
            async with live.ws("p1") as ws:
                error = await receive(ws)
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await receive(ws)
            took = time.monotonic() - began
        assert error["type"] == "error" and error["code"] == "store_unavailable"
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert took < PROMPT
        await wait_until_ready(live)
        async with live.ws("p1") as ws:
            snapshot: dict[str, Any] = await receive(ws)
            assert snapshot["type"] == "snapshot"


async def test_a_start_answered_503_that_redis_runs_after_the_freeze_is_run_not_stranded(
    own_redis: RedisServer,
) -> None:
    """Redis froze holding a start it had been sent: the client got 503; when Redis resumes and stores the job,
    the engine runs it to completion instead of leaving it queued until its lease expires as interrupted."""
    async with live_server(store=own_redis.url(), lease_seconds=1.0) as live:
        warm_up = await live.start("warm-up", "quick")  # Redis has the start script loaded, as any running server
        await wait_until_final(live, warm_up["job_id"])
        with own_redis.frozen():
            refused = await live.http.post("/api/projects/p1/agents/quick/refresh", timeout=WAIT * 3)
        assert refused.status_code == 503

        async def stored() -> dict[str, Any] | None:  # the job appears when Redis runs the write
            reply = await live.http.get("/api/projects/p1/agents/quick/job")
            return reply.json() if reply.status_code == 200 else None

        job = await wait_until_final(live, (await eventually_async(stored))["job_id"])
        assert job["status"] == "completed" and job["result"] == {"project": "p1"}, job


async def wait_until_final(live: Live, job_id: str) -> dict[str, Any]:
    async def final() -> dict[str, Any] | None:  # polling as an HTTP client does
        job: dict[str, Any] = (await live.http.get(f"/api/jobs/{job_id}")).json()
        return None if job["status"] in ("queued", "running") else job

    return await eventually_async(final, what=f"job {job_id} final")
