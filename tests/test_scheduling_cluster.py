"""The scheduler across real processes on a real Redis: limits hold cluster-wide, and dedicated workers.

Two ``jobcast serve`` processes (or a ``serve --threads 0`` and a ``jobcast worker``)
share one redis-server the tests start. Limits are checked from what the job records
say: no moment when more jobs of a group were running than its limit allows.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect

from tests.redis_server import RedisServer
from tests.servers import JobcastServer, jobcast_command, jobcast_server, jobcast_worker
from tests.support import WAIT, eventually_async

pytestmark = pytest.mark.anyio

NAPS = [option for letter in "abcde" for option in ("--agent", f"tests.agents:nap_{letter}")]
NAPS += ["--agent", "tests.agents:nap_limited"]
LEASE_SECONDS = 1.0


@pytest.fixture
def store_url(redis_server: RedisServer) -> str:
    return redis_server.url()


def common_args(store_url: str) -> list[str]:
    return [
        "--store", store_url, "--demo-seconds", "0.05", "--lease-seconds", str(LEASE_SECONDS),
        "--starts-per-minute", "10000", "--threads", "4",
    ]  # fmt: skip


@contextlib.contextmanager
def two_servers(args: list[str], tmp_path: Path) -> Iterator[tuple[JobcastServer, JobcastServer]]:
    with jobcast_server(args, tmp_path / "a.log") as a, jobcast_server(args, tmp_path / "b.log") as b:
        yield a, b


def most_at_once(jobs: list[dict[str, Any]]) -> int:
    """The most of ``jobs``' agents running at one moment, from the times each agent says it ran.

    Not the records' ``started_at`` and ``finished_at``: those are stamped just before the start's atomic
    write and just after the agent returns, so back-to-back jobs of one group seem to overlap by a moment.
    """
    moments = []
    for job in jobs:
        began, ended = job["result"]["ran"]
        moments += [(began, 1), (ended, -1)]
    running = peak = 0
    for _, change in sorted(moments, key=lambda moment: (moment[0], moment[1])):  # an end before a start at a tie
        running += change
        peak = max(peak, running)
    return peak


async def burst(servers: tuple[JobcastServer, ...], starts: list[tuple[str, str]]) -> list[str]:
    """Start every (project, agent) at once, alternating servers, each with a follow-up: 2 jobs per pair."""
    job_ids: list[str] = []
    async with httpx.AsyncClient(timeout=WAIT) as http:

        async def ask(server: JobcastServer, project: str, agent: str, body: dict[str, str]) -> None:
            reply = await http.post(f"{server.url}/api/projects/{project}/agents/{agent}/refresh", json=body)
            assert reply.status_code == 202, reply.text
            job_ids.append(reply.json()["job"]["job_id"])

        async with anyio.create_task_group() as tasks:
            for index, (project, agent) in enumerate(starts):
                tasks.start_soon(ask, servers[index % 2], project, agent, {})
        async with anyio.create_task_group() as tasks:
            for index, (project, agent) in enumerate(starts):
                tasks.start_soon(ask, servers[(index + 1) % 2], project, agent, {"if_active": "queue"})
    return job_ids


async def all_final(
    server: JobcastServer, job_ids: list[str], headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=WAIT, headers=headers) as http:

        async def records() -> list[dict[str, Any]] | None:
            found = [(await http.get(f"{server.url}/api/jobs/{job_id}")).json() for job_id in job_ids]
            return found if all(job["status"] not in ("queued", "running") for job in found) else None

        return await eventually_async(records, what=f"{len(job_ids)} jobs final")


@pytest.mark.parametrize(
    ("option", "starts", "group", "limit"),
    [
        (["--max-running-per-project", "2"], [(f"p{n}", f"nap_{letter}") for n in range(5) for letter in "abcde"],
         "project_id", 2),
        ([], [(f"p{n}", "nap_limited") for n in range(25)], "agent", 2),
        (["--max-running-per-user", "3"], [(f"p{n}", "nap_a") for n in range(25)], None, 3),
    ],
    ids=["project", "agent", "user"],
)  # fmt: skip
async def test_each_limit_holds_under_a_burst_of_50_starts_across_two_processes(
    store_url: str, tmp_path: Path, option: list[str], starts: list[tuple[str, str]], group: str | None, limit: int
) -> None:
    """50 jobs started at once through two processes: all complete, each exactly once, never over the limit."""
    with two_servers([*common_args(store_url), *NAPS, *option], tmp_path) as servers:
        job_ids = await burst(servers, starts)  # 25 (project, agent) pairs, each started and then followed up
        jobs = await all_final(servers[0], job_ids)
    assert len(job_ids) == len(set(job_ids)) == 50
    assert [job["status"] for job in jobs] == ["completed"] * len(jobs), [job["error"] for job in jobs]
    assert {job["runner"]["pid"] for job in jobs} == {s.process.pid for s in servers}  # both processes ran jobs
    groups: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        groups.setdefault(job[group] if group else "everyone", []).append(job)
    assert max(most_at_once(members) for members in groups.values()) <= limit


async def test_a_worker_runs_what_a_serve_with_no_threads_accepts_and_its_progress_reaches_the_socket(
    store_url: str, tmp_path: Path
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    env = {"JOBCAST_TEST_GATES": str(gates)}
    agents = ["--agent", "tests.agents:FileGatedAgent"]
    serve = [*common_args(store_url), *agents, "--threads", "0"]
    with (
        jobcast_server(serve, tmp_path / "serve.log", env) as server,
        jobcast_worker([*common_args(store_url), *agents], tmp_path / "worker.log", env) as worker,
    ):
        async with connect(f"ws://127.0.0.1:{server.port}/ws/projects/w") as ws:
            seen = [json.loads(await ws.recv())]
            async with httpx.AsyncClient(timeout=WAIT, base_url=server.url) as http:
                job = (await http.post("/api/projects/w/agents/filegated/refresh")).json()["job"]
                with anyio.fail_after(WAIT):
                    while not (seen[-1]["type"] == "progress" and seen[-1]["percent"] == 50):
                        seen.append(json.loads(await ws.recv()))
                (gates / "w").touch()
                with anyio.fail_after(WAIT):
                    while not (seen[-1]["type"] == "job" and seen[-1]["job"]["status"] == "completed"):
                        seen.append(json.loads(await ws.recv()))
                done = (await http.get(f"/api/jobs/{job['job_id']}")).json()
                assert done["runner"]["pid"] == worker.process.pid != server.process.pid
                assert (await http.get("/healthz")).json()["threads"] == 0


async def test_a_worker_killed_mid_job_leaves_it_interrupted_within_the_lease(store_url: str, tmp_path: Path) -> None:
    env = {"JOBCAST_TEST_GATES": str(tmp_path)}
    agents = ["--agent", "tests.agents:FileGatedAgent"]
    with (
        jobcast_server([*common_args(store_url), *agents, "--threads", "0"], tmp_path / "serve.log", env) as server,
        jobcast_worker([*common_args(store_url), *agents], tmp_path / "worker.log", env) as worker,
    ):
        async with httpx.AsyncClient(timeout=WAIT, base_url=server.url) as http:
            job = (await http.post("/api/projects/k/agents/filegated/refresh")).json()["job"]

            async def running() -> bool:
                return bool((await http.get(f"/api/jobs/{job['job_id']}")).json()["status"] == "running")

            await eventually_async(running, what="the job running on the worker")
            worker.kill()
            killed_at = time.monotonic()

            async def ended() -> dict[str, Any] | None:
                record: dict[str, Any] = (await http.get(f"/api/jobs/{job['job_id']}")).json()
                return record if record["status"] != "running" else None

            record = await eventually_async(ended, what="the killed worker's job ended")
        assert record["status"] == "failed" and record["error"]["code"] == "interrupted"
        # Lease (1 s) plus the survivor's lease round (a third of it), with room for a slow machine.
        assert time.monotonic() - killed_at < LEASE_SECONDS * 5


async def test_a_worker_stopped_lets_its_running_job_finish_within_the_grace(store_url: str, tmp_path: Path) -> None:
    env = {"JOBCAST_TEST_GATES": str(tmp_path)}
    agents = ["--agent", "tests.agents:FileGatedAgent"]
    worker_args = [*common_args(store_url), *agents, "--shutdown-grace", str(WAIT)]
    with (
        jobcast_server([*common_args(store_url), *agents, "--threads", "0"], tmp_path / "serve.log", env) as server,
        jobcast_worker(worker_args, tmp_path / "worker.log", env) as worker,
    ):
        async with httpx.AsyncClient(timeout=WAIT, base_url=server.url) as http:
            job = (await http.post("/api/projects/g/agents/filegated/refresh")).json()["job"]

            async def running() -> bool:
                return bool((await http.get(f"/api/jobs/{job['job_id']}")).json()["status"] == "running")

            await eventually_async(running, what="the job running on the worker")
            worker.process.terminate()

            async def draining() -> bool:
                return "taking no more jobs" in worker.log

            await eventually_async(draining, what="the worker draining")
            second = (await http.post("/api/projects/h/agents/filegated/refresh")).json()["job"]
            (tmp_path / "g").touch()
            with anyio.fail_after(WAIT):
                await anyio.to_thread.run_sync(worker.process.wait)
            first = (await http.get(f"/api/jobs/{job['job_id']}")).json()
            later = (await http.get(f"/api/jobs/{second['job_id']}")).json()
    assert worker.process.returncode == 0
    assert first["status"] == "completed"
    assert later["status"] == "queued"  # a draining worker takes no new job; it waits for the next worker


@pytest.mark.parametrize("command", ["serve-threads-0", "worker"])
def test_no_threads_or_a_worker_on_an_embedded_store_is_refused_in_one_line(command: str, tmp_path: Path) -> None:
    import subprocess

    args = ["serve", "--threads", "0", "--port", "0"] if command == "serve-threads-0" else ["worker"]
    done = subprocess.run(
        [*jobcast_command(), *args, "--store", f"sqlite:///{tmp_path / 'x.db'}"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "redis://" in done.stderr, done.stderr
    assert not (tmp_path / "x.db").exists()


async def test_priority_and_fair_share_hold_for_jobs_accepted_by_another_process(
    store_url: str, tmp_path: Path
) -> None:
    """B accepts (no threads), A runs (one thread): low, normal, high queued in that order start high, normal,
    low; and with tokens, Bob's one job starts before Alice's third of twenty."""
    from jobcast.server.auth import TokenSigner

    secret = "s" * 32
    env = {"JOBCAST_TEST_GATES": str(tmp_path), "JOBCAST_SECRET": secret}
    agents = ["--agent", "tests.agents:FileGatedAgent", "--agent", "tests.agents:QuickAgent"]
    runner_args = [*common_args(store_url), *agents, "--threads", "1"]
    with (
        jobcast_server(runner_args, tmp_path / "a.log", env) as a,
        jobcast_server([*common_args(store_url), *agents, "--threads", "0"], tmp_path / "b.log", env) as b,
    ):

        def headers(subject: str) -> dict[str, str]:
            minted = TokenSigner(secret).mint(["*"], ["read", "run"], 600, time.time(), subject=subject)
            return {"authorization": f"Bearer {minted}"}

        async with httpx.AsyncClient(timeout=WAIT) as http:

            async def refresh(project: str, agent: str, subject: str, body: dict[str, str] | None = None) -> str:
                url = f"{b.url}/api/projects/{project}/agents/{agent}/refresh"
                reply = await http.post(url, json=body, headers=headers(subject))
                assert reply.status_code == 202, reply.text
                return str(reply.json()["job"]["job_id"])

            async def record(job_id: str) -> dict[str, Any]:
                found: dict[str, Any] = (await http.get(f"{b.url}/api/jobs/{job_id}", headers=headers("x"))).json()
                return found

            async def blocker_running(job_id: str) -> bool:
                return (await record(job_id))["status"] == "running"

            hold = await refresh("hold", "filegated", "carol")
            await eventually_async(lambda: blocker_running(hold), what="the blocker running on A")
            ordered_ids = [await refresh(p, "quick", "dave", {"priority": p}) for p in ("low", "normal", "high")]
            alice = [await refresh(f"a{n}", "quick", "alice") for n in range(20)]
            bob = await refresh("b0", "quick", "bob")
            (tmp_path / "hold").touch()
            jobs = await all_final(b, [*ordered_ids, *alice, bob], headers("x"))
    started = {job["job_id"]: job["started_at"] for job in jobs}
    low, normal, high = (started[job_id] for job_id in ordered_ids)
    assert high < normal < low
    assert started[bob] < sorted(started[job_id] for job_id in alice)[2]
    assert {job["runner"]["pid"] for job in jobs} == {a.process.pid}
