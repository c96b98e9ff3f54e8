"""The seed app migrated (examples/flask_app): Flask and jobcast on two ports, driven in Chromium.

The after version's page imports jobcast.js from the jobcast server, its backend mints
each user's token with PyJWT and starts refreshes with the sync client. The test signs
in, runs a full job, cancels one, and restarts jobcast under the open page. The before
version, the seed as its write-up describes it, is checked over HTTP as its page uses it.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import httpx
import pytest
from playwright.async_api import Page, expect

from tests.browser import chromium
from tests.guarded import SECRET
from tests.servers import JobcastServer, free_port
from tests.support import WAIT, eventually

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "flask_app"
TIMEOUT_MS = WAIT * 1000
AGENTS = ["--agent", "seed_agents:FinancialAgent", "--agent", "seed_agents:PerformanceAgent"]


class FlaskApp(JobcastServer):
    """``python examples/flask_app/<version>/app.py`` on a free port; ready once it answers."""

    def command_line(self, command: Sequence[str], args: Sequence[str]) -> list[str]:
        return [*command, *args]

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the Flask app exited with {self.process.returncode}:\n{self.log}")
        try:
            return httpx.get(f"{self.url}/dashboard/ping", timeout=1).status_code in (200, 401)
        except httpx.TransportError:
            return False


@contextlib.contextmanager
def flask_app(version: str, log: Path, env: dict[str, str], port: int | None = None) -> Iterator[FlaskApp]:
    port = port or free_port()
    app = FlaskApp([str(EXAMPLE / version / "app.py")], log, {**env, "PORT": str(port)}, port=port,
                   command=[sys.executable])  # fmt: skip
    try:
        app.wait_ready()
        yield app
    finally:
        app.stop()


def start_jobcast(tmp_path: Path, port: int, app_origin: str) -> JobcastServer:
    args = ["--store", f"sqlite:///{tmp_path / 'jobs.db'}", "--app-dir", str(EXAMPLE), *AGENTS,
            "--allowed-origins", app_origin]  # fmt: skip
    env = {"JOBCAST_SECRET": SECRET, "SEED_AGENT_STEP_SECONDS": "0.8"}
    return JobcastServer(args, tmp_path / "jobcast.log", env, port=port)


async def refresh_until(page: Page, state: str) -> None:
    await page.click("#refresh")
    await expect(page.locator("#job")).to_have_attribute("data-state", state, timeout=TIMEOUT_MS)


async def test_the_migrated_app_follows_runs_cancels_and_survives_a_jobcast_restart(tmp_path: Path) -> None:
    """Sign in; a full job with live progress; a cancel; jobcast restarted mid-job: interrupted, then live again."""
    jobcast_port, app_port = free_port(), free_port()
    app_origin = f"http://127.0.0.1:{app_port}"
    jobcast = start_jobcast(tmp_path, jobcast_port, app_origin)
    try:
        jobcast.wait_ready()
        env = {"JOBCAST_URL": jobcast.url, "JOBCAST_SECRET": SECRET, "FLASK_SECRET_KEY": "test-only"}
        with flask_app("after", tmp_path / "flask.log", env, port=app_port) as app:
            assert app.url == app_origin
            async with chromium() as browser:
                page = await browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                await page.goto(f"{app.url}/login")
                await page.fill("#user", "alice")
                await page.click("button[type=submit]")
                await expect(page).to_have_url(f"{app.url}/dashboard/acme")
                await expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=TIMEOUT_MS)

                # a full job: running with its step and progress, then the result and a notification
                await refresh_until(page, "running")
                await expect(page.locator("#step")).not_to_be_empty(timeout=TIMEOUT_MS)
                await expect(page.locator("#job")).to_have_attribute("data-state", "completed", timeout=TIMEOUT_MS)
                await expect(page.locator("#notification")).to_have_text("Success!")
                await expect(page.locator("#revenue")).to_have_text(re.compile(r"^[0-9]+$"))

                # a cancel, from the page straight to jobcast
                await refresh_until(page, "running")
                await page.click("#cancel")
                await expect(page.locator("#job")).to_have_attribute("data-state", "cancelled", timeout=TIMEOUT_MS)

                # jobcast restarts under the open page, mid-job: the page says offline, then comes back
                # live on its own and shows the job that the restart cut short as failed, and why
                await refresh_until(page, "running")
                await anyio.to_thread.run_sync(jobcast.stop)
                await expect(page.locator("body")).to_have_attribute("data-connection", "offline", timeout=TIMEOUT_MS)
                jobcast = start_jobcast(tmp_path, jobcast_port, app_origin)
                await anyio.to_thread.run_sync(jobcast.wait_ready)
                await expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=TIMEOUT_MS)
                await expect(page.locator("#job")).to_have_attribute("data-state", "failed", timeout=TIMEOUT_MS)
                await expect(page.locator("#job")).to_contain_text("shut down before the job finished")
                await refresh_until(page, "running")
                await expect(page.locator("#job")).to_have_attribute("data-state", "completed", timeout=TIMEOUT_MS)
                assert not errors
        assert "Traceback" not in app.log
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {admin_token()}"}, timeout=WAIT) as http:
            jobs = (await http.get(f"{jobcast.url}/api/projects/acme/jobs")).json()["jobs"]
        assert {job["started_by"] for job in jobs} == {"alice"}  # the backend started each for its user
    finally:
        jobcast.stop()


def admin_token() -> str:
    from jobcast.server.auth import TokenSigner

    return TokenSigner(SECRET).mint(["*"], ["read"], 60, time.time())


def test_the_before_app_polls_its_own_threads(tmp_path: Path) -> None:
    """The seed as described: start returns at once, processing_status is polled until completed."""
    with flask_app("before", tmp_path / "flask.log", {"SEED_AGENT_STEP_SECONDS": "0.05"}) as app:
        started = httpx.get(f"{app.url}/financial_agent/status/acme", timeout=WAIT).json()
        assert started["processing"] is True
        again = httpx.get(f"{app.url}/financial_agent/status/acme", timeout=WAIT).json()
        assert again["job_id"] == started["job_id"]  # duplicate prevention
        eventually(
            lambda: (
                httpx.get(f"{app.url}/financial_agent/processing_status/acme", timeout=WAIT).json()["status"]
                == "completed"
            ),
            what="the background thread finished",
        )
        data = httpx.get(f"{app.url}/financial_agent/quick_status/acme", timeout=WAIT).json()["data"]
        assert data["project_id"] == "acme" and data["revenue"] > 0
