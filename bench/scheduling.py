"""The scheduling delay: from a thread becoming free to the next queued job's start.

A `hold` job keeps every thread busy while 1,000 jobs are queued across 100 projects
(5 agents each, each with a follow-up); then the holds end and the queue drains. For
each thread, jobs run one after another, so every start's delay is its ``started_at``
minus the ``finished_at`` of the job that ran before it on that thread: the final
write, the wake-up, reading the queue, choosing by the rules and the atomic start.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx

from bench.agents import TICK_COUNT
from bench.common import free_port, parse_iso, percentile
from bench.procs import redis_server, wait_for_port

LAYOUTS = (
    ("sqlite", "one process, sqlite:// (the default)"),
    ("redis", "two processes sharing redis://"),
)
AGENTS = ["bench.agents:Hold", *(f"bench.agents:Tick{index}" for index in range(TICK_COUNT))]


@contextlib.contextmanager
def _serve(store: str, gate: Path, max_queued: int) -> Iterator[str]:
    port = free_port()
    command = [
        sys.executable, "-m", "jobcast", "serve", "--port", str(port), "--store", store, "--threads", "1",
        "--log-level", "warning", "--max-queued", str(max_queued), "--starts-per-minute", "1000000",
        *[arg for agent in AGENTS for arg in ("--agent", agent)],
    ]  # fmt: skip
    env = {**os.environ, "JOBCAST_BENCH_GATE": str(gate)}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(15)


async def _fill_and_drain(urls: list[str], projects: int, gate: Path) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=30) as http:
        holds = [
            (await http.post(f"{url}/api/projects/hold{index}/agents/hold/refresh")).json()["job"]
            for index, url in enumerate(urls)
        ]
        for hold in holds:
            await _until(http, f"{urls[0]}/api/jobs/{hold['job_id']}", ("queued",), 0.01)
        ids: list[str] = []
        limiter = anyio.CapacityLimiter(20)

        async def start(index: int, path: str, body: dict[str, str]) -> None:
            async with limiter:
                reply = await http.post(f"{urls[index % len(urls)]}{path}", json=body)
                assert reply.status_code == 202, reply.text
                ids.append(reply.json()["job"]["job_id"])

        for body in ({}, {"if_active": "queue"}):
            async with anyio.create_task_group() as tasks:
                for index in range(projects * TICK_COUNT):
                    path = f"/api/projects/p{index // TICK_COUNT}/agents/tick{index % TICK_COUNT}/refresh"
                    tasks.start_soon(start, index, path, body)
        await anyio.to_thread.run_sync(gate.touch)
        # Rarely: each look at a queued job's record costs the server a read of the whole queue.
        return [
            await _until(http, f"{urls[0]}/api/jobs/{job_id}", ("queued", "running"), 0.5)
            for job_id in [*(hold["job_id"] for hold in holds), *ids]
        ]


async def _until(http: httpx.AsyncClient, url: str, not_yet: tuple[str, ...], period: float) -> dict[str, Any]:
    """Poll ``url`` every ``period`` seconds until the job's status is none of ``not_yet``."""
    while True:
        job: dict[str, Any] = (await http.get(url)).json()
        if job["status"] not in not_yet:
            return job
        await anyio.sleep(period)  # noqa: ASYNC110 - another process's state: nothing here to wait on


def delays_ms(jobs: list[dict[str, Any]]) -> list[float]:
    """Per thread (one per process here), each start minus the previous job's end."""
    by_runner: dict[int, list[dict[str, Any]]] = {}
    for job in jobs:
        by_runner.setdefault(job["runner"]["pid"], []).append(job)
    found = []
    for runs in by_runner.values():
        runs.sort(key=lambda job: parse_iso(job["started_at"]))
        for before, after in zip(runs, runs[1:], strict=False):
            found.append(1000 * (parse_iso(after["started_at"]) - parse_iso(before["finished_at"])))
    return found


def scheduling(projects: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    for layout, _ in LAYOUTS:
        with contextlib.ExitStack() as stack:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            gate = folder / "gate"
            queued = projects * TICK_COUNT * 2
            if layout == "sqlite":
                urls = [stack.enter_context(_serve(f"sqlite:///{folder / 'jobs.db'}", gate, queued))]
            else:
                redis_url = stack.enter_context(redis_server())
                if redis_url is None:
                    log("scheduling: redis layout skipped, redis-server is not installed")
                    continue
                urls = [stack.enter_context(_serve(redis_url, gate, queued)) for _ in range(2)]
            jobs = anyio.run(_fill_and_drain, urls, projects, gate)
        measured = delays_ms(jobs)
        row = {
            "layout": layout,
            "queued": queued,
            "projects": projects,
            "starts": len(measured),
            "completed": sum(job["status"] == "completed" for job in jobs),
            "jobs": len(jobs),
            "p50_ms": percentile(measured, 50),
            "p99_ms": percentile(measured, 99),
            "max_ms": max(measured),
        }
        rows.append(row)
        log(f"scheduling {layout:6}: p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, {len(measured)} starts")
    return rows


def scheduling_table(rows: list[dict[str, Any]]) -> str:
    labels = dict(LAYOUTS)
    lines = [
        "| layout | jobs queued (projects) | starts measured | p50 ms | p99 ms | max ms | every job completed |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {labels[row['layout']]} | {row['queued']:,} ({row['projects']}) | {row['starts']:,} | "
            f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['max_ms']:.2f} | "
            f"{'yes' if row['completed'] == row['jobs'] else '**no**'} |"
        )
    return "\n".join(lines)
