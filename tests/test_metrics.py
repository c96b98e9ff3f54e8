"""/metrics: Prometheus numbers after a known sequence of jobs, the admin right, and a cluster added up."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from tests.agents import FailingAgent, FlakyAgent, QuickAgent
from tests.guarded import SECRET, Tokens
from tests.live import live_server
from tests.redis_server import RedisServer
from tests.redis_server import redis_server as own_redis_server
from tests.servers import jobcast_server, jobcast_worker
from tests.support import WAIT, eventually, status_is

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a scrape, by name and labels; the parser rejects anything Prometheus would."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def test_a_known_sequence_of_jobs_is_counted(make_app: Callable[..., Any]) -> None:
    """Two completed, one failed, one that failed twice worth retrying and then completed."""
    FlakyAgent.calls.clear()
    agents = {"quick": QuickAgent(), "failing": FailingAgent(), "flaky": FlakyAgent()}
    async with make_app(agents=agents) as app:
        for project, agent in (("a", "quick"), ("b", "quick"), ("a", "failing"), ("a", "flaky")):
            answer = await app.http.post(f"/api/projects/{project}/agents/{agent}/refresh")
            await app.wait_for(answer.json()["job"]["job_id"], status_is("completed", "failed"))
        scrape = await app.http.get("/metrics")
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    found = samples(scrape.text)
    assert value(found, "jobcast_jobs_started_total", agent="quick") == 2
    assert value(found, "jobcast_jobs_started_total", agent="flaky") == 3  # one per attempt
    assert value(found, "jobcast_jobs_finished_total", agent="quick", status="completed") == 2
    assert value(found, "jobcast_jobs_finished_total", agent="failing", status="failed") == 1
    assert value(found, "jobcast_jobs_finished_total", agent="flaky", status="completed") == 1
    assert value(found, "jobcast_job_retries_total", agent="flaky") == 2
    assert value(found, "jobcast_job_duration_seconds_count", agent="quick") == 2
    assert value(found, "jobcast_job_duration_seconds_bucket", agent="quick", le="+Inf") == 2
    assert value(found, "jobcast_queue_depth") == 0 and value(found, "jobcast_jobs_running") == 0
    assert value(found, "jobcast_store_errors_total") == 0


async def test_subscribers_and_messages_are_counted_by_transport_and_type() -> None:
    async with live_server() as live:
        async with connect(live.ws_url("acme")) as ws:
            assert json.loads(await ws.recv())["type"] == "snapshot"
            job = (await live.http.post("/api/projects/acme/agents/quick/refresh")).json()["job"]
            with anyio.fail_after(WAIT):
                while not (message := json.loads(await ws.recv()))["type"] == "job" or (
                    message["job"]["job_id"] != job["job_id"] or message["job"]["status"] != "completed"
                ):
                    pass
            found = samples((await live.http.get("/metrics")).text)
            assert value(found, "jobcast_subscribers", transport="websocket") == 1
            assert value(found, "jobcast_subscribers", transport="sse") == 0
            assert value(found, "jobcast_messages_sent_total", type="job") >= 3  # queued, running, completed
        refused = await live.http.get("/api/projects/acme/events/stream", headers={"origin": "https://evil.example"})
        assert refused.status_code == 403
        found = samples((await live.http.get("/metrics")).text)
        assert value(found, "jobcast_refused_total", transport="http", reason="origin_not_allowed") == 1


async def test_with_a_secret_metrics_need_the_admin_right(make_app: Callable[..., Any]) -> None:
    async with make_app(secret=SECRET) as app:
        assert (await app.http.get("/metrics")).status_code == 401
        reader = {"authorization": f"Bearer {Tokens().mint(('*',))}"}
        refused = await app.http.get("/metrics", headers=reader)
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "forbidden")
        admin = {"authorization": f"Bearer {Tokens().mint(('*',), ('admin',))}"}
        assert (await app.http.get("/metrics", headers=admin)).status_code == 200


def test_any_process_of_a_cluster_shows_every_process_jobs(tmp_path: Path, redis_server: RedisServer) -> None:
    """--workers 2 that run no jobs (--threads 0) and a jobcast worker that runs them all: whichever
    child answers a scrape, it counts the worker's jobs, which no serving process ran."""
    store = ["--store", redis_server.url(), "--demo-seconds", "0.05", "--starts-per-minute", "10000"]
    agents = ["--agent", "tests.agents:QuickAgent"]
    with (
        jobcast_server([*store, *agents, "--workers", "2", "--threads", "0"], tmp_path / "serve.log") as server,
        jobcast_worker([*store, *agents], tmp_path / "worker.log"),
    ):
        job_ids = []
        for project in ("p1", "p2", "p3", "p4"):
            answer = httpx.post(f"{server.url}/api/projects/{project}/agents/quick/refresh", timeout=WAIT)
            job_ids.append(answer.json()["job"]["job_id"])

        def all_done() -> bool:
            return all(httpx.get(f"{server.url}/api/jobs/{job_id}", timeout=WAIT).json()["status"] == "completed"
                       for job_id in job_ids)  # fmt: skip

        eventually(all_done, what="the worker finished every job")

        def scraped_whole() -> Samples | None:
            found = samples(httpx.get(f"{server.url}/metrics", timeout=WAIT).text)
            return (
                found if value(found, "jobcast_jobs_finished_total", agent="quick", status="completed") == 4 else None
            )

        eventually(scraped_whole, timeout=3 * WAIT, what="a scrape that counts the worker's 4 jobs")
        for _ in range(6):  # whichever child answers, the same cluster
            found = samples(httpx.get(f"{server.url}/metrics", timeout=WAIT).text)
            assert value(found, "jobcast_jobs_finished_total", agent="quick", status="completed") == 4
            assert value(found, "jobcast_jobs_started_total", agent="quick") == 4


async def test_a_frozen_redis_is_counted_as_store_errors_and_outage_time(tmp_path: Path) -> None:
    """Redis stops answering (SIGSTOP): API calls answer 503, and /metrics still answers, counting the outage."""
    with own_redis_server(tmp_path / "redis") as redis:
        async with live_server(store=redis.url()) as live:
            with redis.frozen():
                refused = await live.http.get("/api/projects/acme")
                assert refused.status_code == 503
                scrape = await live.http.get("/metrics")
                assert scrape.status_code == 200
                found = samples(scrape.text)
                assert value(found, "jobcast_store_errors_total") >= 1
                assert value(found, "jobcast_store_outage_seconds_total") > 0
