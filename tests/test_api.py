"""The HTTP API in-process: shapes, the old app's routes, and bad input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from jobcast.agents.builtin import financial_figures
from tests.live import live_server
from tests.support import status_is

pytestmark = pytest.mark.anyio

MakeApp = Callable[..., Any]


async def test_project_status_lists_every_agent(make_app: MakeApp) -> None:
    """GET /api/projects/{id} has epoch, seq and each agent's job and last result; it starts nothing."""
    async with make_app() as app:
        empty = (await app.http.get("/api/projects/fresh")).json()
        assert empty["seq"] == 0 and empty["project_id"] == "fresh"
        assert empty["agents"]["quick"] == {"job": None, "last_result": None, "last_result_at": None}
        assert await app.engine.store.project_ids() == []

        job = (await app.http.post("/api/projects/p1/agents/quick/refresh")).json()["job"]
        await app.wait_for(job["job_id"], status_is("completed"))
        status = (await app.http.get("/api/projects/p1")).json()
        quick = status["agents"]["quick"]
        assert quick["job"]["job_id"] == job["job_id"] and quick["job"]["status"] == "completed"
        assert quick["last_result"] == {"project": "p1"} and quick["last_result_at"]
        assert status["seq"] == 3 and status["epoch"] == app.engine.store.epoch


async def test_job_lookup_routes(make_app: MakeApp) -> None:
    """A job can be read by id, as its agent's current job, and in the history."""
    async with make_app() as app:
        job = (await app.http.post("/api/projects/p1/agents/quick/refresh")).json()["job"]
        await app.wait_for(job["job_id"], status_is("completed"))
        by_id = (await app.http.get(f"/api/jobs/{job['job_id']}")).json()
        current = (await app.http.get("/api/projects/p1/agents/quick/job")).json()
        history = (await app.http.get("/api/projects/p1/jobs?limit=5")).json()
        assert by_id == current
        assert by_id["status"] == "completed" and by_id["elapsed_s"] >= 0
        assert [j["job_id"] for j in history["jobs"]] == [job["job_id"]]
        assert (await app.http.get("/api/projects")).json() == {"projects": ["p1"]}


async def test_agents_and_health(make_app: MakeApp) -> None:
    """GET /api/agents lists names and timeouts; /healthz reports the store and workers."""
    async with make_app(job_timeout=42) as app:
        agents = (await app.http.get("/api/agents")).json()["agents"]
        by_name = {a["name"]: a["timeout_s"] for a in agents}
        assert by_name["stubborn"] == 0.2 and by_name["quick"] == 42
        health = (await app.http.get("/healthz")).json()
        assert health["status"] == "ok" and health["store"] == "memory" and health["threads"] == 8


async def test_legacy_routes_keep_the_old_contract(make_app: MakeApp) -> None:
    """status starts a job, processing_status reports it, quick_status reads the result."""
    async with make_app() as app:
        before = (await app.http.get("/financial_agent/processing_status/acme")).json()
        assert before["status"] == "not_found"
        assert (await app.http.get("/financial_agent/quick_status/acme")).json()["status"] == "no_data"

        started = (await app.http.post("/financial_agent/status/acme")).json()
        assert started["processing"] is True and started["status"] == "processing"
        again = (await app.http.get("/financial_agent/status/acme")).json()
        assert again["job_id"] == started["job_id"] and again["deduplicated"] is True

        await app.wait_for(started["job_id"], status_is("completed"))
        done = (await app.http.get("/financial_agent/processing_status/acme")).json()
        assert done["status"] == "completed" and done["job_id"] == started["job_id"]
        assert done["agent"] == "financial" and done["started_at"] and done["completed_at"]
        assert done["result"] == financial_figures("acme")
        quick = (await app.http.get("/financial_agent/quick_status/acme")).json()
        assert quick["status"] == "ok" and quick["data"] == financial_figures("acme")
        assert quick["processing"] is False


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/api/projects/bad%20id", 400, "invalid_project_id"),
        ("GET", "/api/projects/-leading-dash", 400, "invalid_project_id"),
        ("GET", "/api/projects/" + "x" * 65, 400, "invalid_project_id"),
        ("POST", "/api/projects/.hidden/agents/quick/refresh", 400, "invalid_project_id"),
        ("POST", "/api/projects/p1/agents/nobody/refresh", 404, "unknown_agent"),
        ("POST", "/api/projects/p1/agents/nobody/cancel", 404, "unknown_agent"),
        ("GET", "/api/projects/p1/agents/nobody/job", 404, "unknown_agent"),
        ("GET", "/api/projects/p1/agents/quick/job", 404, "job_not_found"),
        ("GET", "/api/jobs/does-not-exist", 404, "job_not_found"),
        ("GET", "/api/projects/p1/jobs?limit=0", 400, "invalid_limit"),
        ("GET", "/api/projects/p1/jobs?limit=abc", 400, "invalid_limit"),
        ("GET", "/api/projects/p1/jobs?limit=1_0", 400, "invalid_limit"),
        ("GET", "/api/projects/p1/jobs?limit=²", 400, "invalid_limit"),
        ("GET", "/api/projects/p1/jobs?limit=١٠", 400, "invalid_limit"),
        ("GET", "/api/projects/p1/jobs?agent=nobody", 404, "unknown_agent"),
        ("POST", "/api/projects/p1/agents/quick/cancel", 409, "nothing_to_cancel"),
        ("GET", "/api/projects/p1/agents/quick/refresh", 405, "method_not_allowed"),
        ("DELETE", "/api/projects/p1", 405, "method_not_allowed"),
        ("POST", "/financial_agent/processing_status/p1", 405, "method_not_allowed"),
        ("GET", "/nobody_agent/status/p1", 404, "unknown_agent"),
        ("GET", "/financial_agent/status/bad%20id", 400, "invalid_project_id"),
        ("GET", "/no/such/route", 404, "not_found"),
    ],
)
async def test_bad_input_gets_a_json_error_and_changes_nothing(
    make_app: MakeApp, method: str, path: str, status: int, code: str
) -> None:
    """Each bad request is answered with JSON {error: {code, message}} and starts no job."""
    async with make_app() as app:
        response = await app.http.request(method, path)
        assert response.status_code == status
        assert response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert error["code"] == code and error["message"]
        assert await app.engine.store.active_jobs() == []
        assert await app.engine.store.project_ids() == []


async def test_an_unexpected_error_is_json_without_a_traceback(make_app: MakeApp) -> None:
    """A bug in a handler becomes a 500 with code internal_error, never a traceback."""
    async with make_app() as app:

        async def broken(*args: Any) -> Any:
            raise RuntimeError("secret internals")

        app.engine.store.get_job = broken  # type: ignore[method-assign]
        response = await app.http.get("/api/jobs/abc")
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal_error"
        assert "secret" not in response.text and "Traceback" not in response.text


async def test_a_trailing_slash_is_a_json_404(make_app: MakeApp) -> None:
    """No bodyless redirects: an unknown path, slash or not, is a JSON 404."""
    async with make_app() as app:
        response = await app.http.get("/api/projects/")
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


async def test_readyz_is_ready_with_a_working_store_and_draining_once_shutdown_begins() -> None:
    """/readyz: 200 while the store answers; 503 draining once shutdown has begun, while /healthz stays 200."""
    async with live_server() as live:
        ready = await live.http.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready", "store": "memory"}
        live.hub.closing.set()  # what the server does first at SIGTERM
        draining = await live.http.get("/readyz")
        assert draining.status_code == 503
        assert draining.json()["status"] == "draining" and draining.json()["error"]["code"] == "draining"
        assert (await live.http.get("/healthz")).status_code == 200
