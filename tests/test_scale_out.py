"""Many processes on one Redis, end to end: real ``jobcast serve`` processes and a real redis-server.

Any process serves any client and resumes any cursor; a crashed process's jobs end as
``interrupted``; a Redis restart leaves no subscriber deaf.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.redis_server import RedisServer, redis_server
from tests.servers import JobcastServer, jobcast_command, jobcast_server
from tests.support import WAIT, eventually_async

AGENTS = ["--agent", "jobcast.agents.builtin:FinancialAgent", "--agent", "tests.agents:FileGatedAgent"]
LEASE_SECONDS = 1.0

Message = dict[str, Any]


def serve_args(store_url: str) -> list[str]:
    return [
        "--store", store_url, *AGENTS, "--demo-seconds", "0.3", "--progress-interval", "0.2",
        "--lease-seconds", str(LEASE_SECONDS), "--starts-per-minute", "10000",
    ]  # fmt: skip


@contextlib.contextmanager
def two_servers(
    store_url: str, tmp_path: Path, a_extra: Sequence[str] = (), b_extra: Sequence[str] = ()
) -> Iterator[tuple[JobcastServer, JobcastServer]]:
    """Two processes on one Redis; ``--threads 0`` in one's extra options makes the other run every job."""
    env = {"JOBCAST_TEST_GATES": str(gates(tmp_path))}
    with (
        jobcast_server([*serve_args(store_url), *a_extra], tmp_path / "a.log", env) as a,
        jobcast_server([*serve_args(store_url), *b_extra], tmp_path / "b.log", env) as b,
    ):
        yield a, b


def gates(tmp_path: Path) -> Path:
    path = tmp_path / "gates"
    path.mkdir(exist_ok=True)
    return path


def open_gate(tmp_path: Path, project: str) -> None:
    (gates(tmp_path) / project).touch()


@contextlib.asynccontextmanager
async def socket(server: JobcastServer, project: str, query: str = "") -> AsyncIterator[ClientConnection]:
    async with connect(f"ws://127.0.0.1:{server.port}/ws/projects/{project}{query}") as ws:
        yield ws


async def until(ws: ClientConnection, done: Callable[[Message], bool]) -> list[Message]:
    """Every message up to and including the first that ``done`` accepts."""
    seen: list[Message] = []
    with anyio.fail_after(WAIT):
        while True:
            seen.append(json.loads(await ws.recv()))
            if done(seen[-1]):
                return seen


def job_is(status: str, job_id: str | None = None) -> Callable[[Message], bool]:
    def check(message: Message) -> bool:
        job = message.get("job") or {}
        return message["type"] == "job" and job["status"] == status and job_id in (None, job["job_id"])

    return check


def transitions(messages: list[Message]) -> list[tuple[int, str]]:
    return [(m["seq"], m["job"]["status"]) for m in messages if m["type"] == "job"]


async def start(server: JobcastServer, project: str, agent: str) -> Message:
    async with httpx.AsyncClient() as http:
        reply = await http.post(f"{server.url}/api/projects/{project}/agents/{agent}/refresh")
    assert reply.status_code in (200, 202), reply.text
    body: Message = reply.json()
    return body


@pytest.fixture
def store_url(redis_server: RedisServer) -> str:
    return redis_server.url()


@pytest.mark.anyio
async def test_subscribe_on_a_start_on_b_and_see_every_transition_and_progress(store_url: str, tmp_path: Path) -> None:
    """A WebSocket on process A gets the transitions and the progress of a job that runs on process B."""
    with two_servers(store_url, tmp_path, a_extra=["--threads", "0"]) as (a, b):
        async with socket(a, "cross") as ws:
            await until(ws, lambda m: m["type"] == "snapshot")
            job_id = (await start(b, "cross", "filegated"))["job"]["job_id"]
            before_gate = await until(ws, lambda m: m["type"] == "progress" and m["percent"] == 50)
            open_gate(tmp_path, "cross")
            after_gate = await until(ws, job_is("completed", job_id))
    seen = before_gate + after_gate
    assert transitions(seen) == [(1, "queued"), (2, "running"), (3, "completed")]
    progress = [m for m in seen if m["type"] == "progress"]
    assert progress and {m["job_id"] for m in progress} == {job_id} and all(m["seq"] == 2 for m in progress)
    assert seen.index(progress[0]) > next(i for i, m in enumerate(seen) if job_is("running")(m))


@pytest.mark.anyio
async def test_a_burst_of_subscribers_all_get_every_transition(store_url: str, tmp_path: Path) -> None:
    """150 WebSockets opening at once (more than redis-py's default pool) each get a snapshot and every event."""
    args = [*serve_args(store_url), "--max-connections-per-client", "1000"]
    with jobcast_server(args, tmp_path / "a.log") as a:
        sockets: list[ClientConnection] = []
        openings: list[Message] = []

        async def subscribe() -> None:
            ws = await connect(f"ws://127.0.0.1:{a.port}/ws/projects/burst")
            sockets.append(ws)
            openings.append(json.loads(await ws.recv()))

        try:
            with anyio.fail_after(WAIT):
                async with anyio.create_task_group() as tasks:
                    for _ in range(150):
                        tasks.start_soon(subscribe)
            job_id = (await start(a, "burst", "financial"))["job"]["job_id"]
            seen = [await until(ws, job_is("completed", job_id)) for ws in sockets]
        finally:
            for ws in sockets:
                await ws.close()
        log = a.log
    assert {opening["type"] for opening in openings} == {"snapshot"}
    assert all(transitions(messages) == [(1, "queued"), (2, "running"), (3, "completed")] for messages in seen)
    assert "unavailable" not in log


@pytest.mark.anyio
async def test_racing_starts_on_both_processes_make_one_job(store_url: str, tmp_path: Path) -> None:
    """60 concurrent refreshes of one (project, agent), half on A and half on B: exactly one job is queued."""
    with two_servers(store_url, tmp_path) as (a, b):
        async with httpx.AsyncClient(timeout=WAIT) as http:
            replies: list[httpx.Response] = []

            async def refresh(server: JobcastServer) -> None:
                replies.append(await http.post(f"{server.url}/api/projects/race/agents/filegated/refresh"))

            async with anyio.create_task_group() as tasks:
                for index in range(60):
                    tasks.start_soon(refresh, (a, b)[index % 2])
            open_gate(tmp_path, "race")
            history = (await http.get(f"{a.url}/api/projects/race/jobs")).json()["jobs"]
    assert sorted(reply.status_code for reply in replies) == [200] * 59 + [202]
    assert len({reply.json()["job"]["job_id"] for reply in replies}) == 1
    assert len(history) == 1


@pytest.mark.anyio
async def test_a_cursor_taken_on_a_resumes_exactly_on_b(store_url: str, tmp_path: Path) -> None:
    """Resuming on B from A's cursor gets a welcome and exactly the transitions after it."""
    with two_servers(store_url, tmp_path) as (a, b):
        async with socket(a, "resume") as ws:
            snapshot = (await until(ws, lambda m: m["type"] == "snapshot"))[0]
            await start(a, "resume", "financial")
            seen = await until(ws, job_is("completed"))
        first = next(m for m in seen if m["type"] == "job")
        async with socket(b, "resume", f"?epoch={first['epoch']}&after={first['seq']}") as ws:
            resumed = await until(ws, job_is("completed"))
    assert first["epoch"] == snapshot["epoch"]
    assert resumed[0]["type"] == "welcome" and resumed[0]["recovered"] is True
    assert transitions(resumed) == [(2, "running"), (3, "completed")]
    assert [m["job"] for m in resumed if m["type"] == "job"] == [m["job"] for m in seen if m["type"] == "job"][1:]


@pytest.mark.anyio
async def test_a_cancel_sent_to_b_stops_the_job_running_on_a(store_url: str, tmp_path: Path) -> None:
    """B (which runs no jobs) records the cancel in Redis; A, which runs the job, hears of it at once."""
    with two_servers(store_url, tmp_path, b_extra=["--threads", "0"]) as (a, b):
        async with socket(a, "cancel") as ws:
            await until(ws, lambda m: m["type"] == "snapshot")
            job_id = (await start(a, "cancel", "filegated"))["job"]["job_id"]
            await until(ws, job_is("running", job_id))
            async with httpx.AsyncClient() as http:
                reply = await http.post(f"{b.url}/api/projects/cancel/agents/filegated/cancel")
            assert reply.status_code == 202, reply.text
            seen = await until(ws, job_is("cancelled", job_id))
    assert [status for _, status in transitions(seen)] == ["running", "cancelled"]
    assert seen[-1]["job"]["cancel_requested"] is True


@pytest.mark.anyio
async def test_kill_9_the_process_running_a_job_and_the_other_ends_it_as_interrupted(
    store_url: str, tmp_path: Path
) -> None:
    """The survivor fails a dead process's job once its lease expires, and subscribers see it; nothing else ends it.

    Either process may take the job from the queue: the one its record names as the runner is killed."""
    with two_servers(store_url, tmp_path) as servers:
        async with socket(servers[0], "crash") as ws_a, socket(servers[1], "crash") as ws_b:
            for ws in (ws_a, ws_b):
                await until(ws, lambda m: m["type"] == "snapshot")
            job_id = (await start(servers[0], "crash", "filegated"))["job"]["job_id"]
            running = (await until(ws_a, job_is("running", job_id)))[-1]["job"]
            victim = 0 if running["runner"]["pid"] == servers[0].process.pid else 1
            b, ws = servers[1 - victim], (ws_b, ws_a)[victim]
            servers[victim].kill()
            killed_at = time.monotonic()
            seen = await until(ws, job_is("failed", job_id))
            took = time.monotonic() - killed_at
        final = seen[-1]["job"]
        async with httpx.AsyncClient() as http:
            status = (await http.get(f"{b.url}/api/projects/crash/agents/filegated/job")).json()
    assert final["error"]["code"] == "interrupted" and status["status"] == "failed"
    assert [m["job"]["status"] for m in seen if m["type"] == "job"][-1:] == ["failed"]  # nothing after it
    print(f"interrupted {took:.2f} s after kill -9 with a {LEASE_SECONDS:g} s lease")
    # The lease, plus one lease round of the survivor, plus generous slack for a loaded machine;
    # a server that ended orphans some other way (or never) would miss this by far.
    assert took < LEASE_SECONDS + 4
    assert "marked 1 interrupted job(s) as failed" in b.log


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server


@pytest.mark.anyio
async def test_redis_restarts_under_a_live_subscriber(own_redis: RedisServer, tmp_path: Path) -> None:
    """While Redis is down the server answers 503s; after it comes back (empty), the subscriber is told honestly."""
    args = serve_args(own_redis.url("restart"))
    with jobcast_server(args, tmp_path / "a.log", {"JOBCAST_TEST_GATES": str(gates(tmp_path))}) as a:
        async with socket(a, "outage") as ws:
            first = (await until(ws, lambda m: m["type"] == "snapshot"))[0]
            await start(a, "outage", "financial")
            await until(ws, job_is("completed"))
            own_redis.stop()
            async with httpx.AsyncClient(timeout=WAIT) as http:
                for _ in range(3):
                    status = await http.get(f"{a.url}/api/projects/outage")
                    refresh = await http.post(f"{a.url}/api/projects/outage/agents/financial/refresh")
                    assert status.status_code == refresh.status_code == 503
                    assert status.json()["error"]["code"] == refresh.json()["error"]["code"] == "store_unavailable"
                assert (await http.get(f"{a.url}/healthz")).status_code == 200
                for path in ("/api/projects/elsewhere/events/stream", "/api/projects/elsewhere/events"):
                    reply = await http.get(f"{a.url}{path}")
                    assert reply.status_code == 503 and reply.json()["error"]["code"] == "store_unavailable"
            async with socket(a, "elsewhere") as other:
                refused = await until(other, lambda m: m["type"] == "error")
                with pytest.raises(ConnectionClosed) as closed:
                    await other.recv()
            assert refused[-1]["code"] == "store_unavailable" and closed.value.rcvd.code == 1013  # type: ignore[union-attr]
            own_redis.start()
            # The server notices the new Redis run, starts a new epoch and closes the socket: resume honestly.
            with anyio.fail_after(WAIT):
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert closed.value.rcvd.reason == "the store started a new epoch; reconnect for a fresh snapshot"
        async with socket(a, "outage", f"?epoch={first['epoch']}&after=3") as ws:
            snapshot = (await until(ws, lambda m: m["type"] == "snapshot"))[0]
            assert snapshot["recovered"] is False and snapshot["epoch"] != first["epoch"]
            await start(a, "outage", "financial")
            seen = await until(ws, job_is("completed"))
        assert transitions(seen) == [(1, "queued"), (2, "running"), (3, "completed")]
    log = a.log
    assert log.count("is unavailable") == 1, log
    assert "reachable again" in log


@pytest.mark.anyio
async def test_the_client_backs_off_and_gives_up_while_the_store_is_down(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    """A store_unavailable refusal is a failure to the client: no error messages yielded, backoff grows, it gives up."""
    from jobcast.client import Reconnect, ServerUnreachable, subscribe

    with jobcast_server(serve_args(own_redis.url("down")), tmp_path / "a.log") as a:
        own_redis.stop()
        delays: list[float] = []
        policy = Reconnect(initial=0.05, maximum=0.4, give_up_after=1.5, retry_first=True)
        hook = lambda error, delay: delays.append(delay)  # noqa: E731
        with anyio.fail_after(WAIT), pytest.raises(ServerUnreachable):
            async with subscribe(a.url, "down", transport="ws", reconnect=policy, on_retry=hook) as events:
                async for message in events:
                    raise AssertionError(f"nothing should be delivered while the store is down: {message}")
    assert len(delays) >= 3 and max(delays) > 2 * min(delays), delays  # it backed off instead of hammering


@pytest.mark.anyio
async def test_long_polls_share_their_processs_one_reader(own_redis: RedisServer, tmp_path: Path) -> None:
    """40 long-polls waiting on one project hold one Redis reader between them, not one connection each."""
    import redis

    with jobcast_server(serve_args(own_redis.url("polls")), tmp_path / "a.log") as a:
        admin = redis.Redis(port=own_redis.port)
        try:
            async with httpx.AsyncClient(timeout=WAIT, limits=httpx.Limits(max_connections=100)) as http:
                epoch = (await http.get(f"{a.url}/api/projects/polls")).json()["epoch"]
                replies: list[httpx.Response] = []

                async def long_poll() -> None:
                    url = f"{a.url}/api/projects/polls/events?epoch={epoch}&after=0&wait=20"
                    replies.append(await http.get(url))

                async with anyio.create_task_group() as tasks:
                    for _ in range(40):
                        tasks.start_soon(long_poll)

                    async def all_waiting() -> bool:  # the server's own count: nothing to await
                        return bool((await http.get(f"{a.url}/healthz")).json()["waiting_polls"] >= 40)

                    await eventually_async(all_waiting, what="40 long-polls waiting on the channel")
                    blocked = [c for c in admin.client_list() if "b" in c["flags"]]  # in a blocking XREAD
                    await start(a, "polls", "financial")
        finally:
            admin.close()
    # At most the project's one channel reader and the process's one watch on the queue (between reads: none).
    assert len(blocked) <= 2, blocked
    assert [reply.json()["events"][0]["job"]["status"] for reply in replies] == ["queued"] * 40


def test_workers_start_n_processes_that_share_redis(store_url: str, tmp_path: Path) -> None:
    """jobcast serve --workers 2 answers on one port from two processes that share one store."""
    with jobcast_server([*serve_args(store_url), "--workers", "2"], tmp_path / "w.log") as server:
        pids = {httpx.get(f"{server.url}/healthz").json()["pid"] for _ in range(40)}
        first = httpx.post(f"{server.url}/api/projects/w/agents/financial/refresh")
        again = httpx.post(f"{server.url}/api/projects/w/agents/financial/refresh")
    assert len(pids) == 2, pids
    assert first.status_code == 202 and again.json()["job"]["job_id"] == first.json()["job"]["job_id"]


@pytest.mark.parametrize("store", ["sqlite:///x.db", "memory://"])
def test_workers_refuse_a_store_one_process_owns(store: str, tmp_path: Path) -> None:
    """--workers 2 with sqlite: or memory: stops at once with one line that says what to use."""
    import subprocess

    done = subprocess.run(
        [*jobcast_command(), "serve", "--workers", "2", "--store", store],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "redis://" in done.stderr and "--workers 2" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_workers_check_the_agents_before_starting_any_process(store_url: str, tmp_path: Path) -> None:
    """A bad agent spec with --workers 2 stops at once with one line, as it does for one process."""
    import subprocess

    done = subprocess.run(
        [*jobcast_command(), "serve", "--workers", "2", "--store", store_url, "--agent", "nope.module:Nope"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "nope.module" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
