"""The live pages in Chromium: the home page and the Jobs page over one WebSocket (/ws), each project
page's recent jobs with Run again, and how many watch a project."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from playwright.async_api import Page, Request, WebSocketRoute, expect

from jobcast.server.auth import TokenSigner
from tests.agents import GatedAgent
from tests.browser import chromium
from tests.guarded import SECRET, bearer
from tests.live import Live, live_server
from tests.support import WAIT, wait_for_job

pytestmark = pytest.mark.anyio

TIMEOUT_MS = WAIT * 1000


def token(projects: tuple[str, ...], rights: tuple[str, ...], subject: str = "ada") -> str:
    return TokenSigner(SECRET).mint(projects, rights, 600, time.time(), subject=subject)


async def finished(live: Live, project_id: str, agent: str) -> dict[str, Any]:
    """Start a job and wait until it ends."""
    job = await live.start(project_id, agent)
    await wait_for_job(live.engine.store, job["job_id"], lambda found: found.status.is_final)
    return job


async def live_page(page: Page, url: str) -> None:
    await page.goto(url)
    await expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=TIMEOUT_MS)


def row_of(page: Page, job_id: str) -> Any:
    return page.locator(f'tr[data-job="{job_id}"]')


async def test_the_home_page_shows_every_project_live_over_one_socket() -> None:
    async with live_server() as live, chromium() as browser:
        await finished(live, "acme", "quick")
        await finished(live, "beta", "failing")
        page = await browser.new_page()
        requests: list[Request] = []
        page.on("request", lambda request: requests.append(request))
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        await live_page(page, live.url)
        acme = page.locator('li[data-project="acme"]')
        await expect(acme.locator('[data-agent="quick"]')).to_have_attribute("data-state", "completed")
        beta = page.locator('li[data-project="beta"]')
        await expect(beta.locator('[data-agent="failing"]')).to_have_attribute("data-state", "failed")
        await live.start("acme", "gated")  # no reload: the socket brings it
        await expect(acme.locator('[data-agent="gated"]')).to_have_attribute(
            "data-state", "running", timeout=TIMEOUT_MS
        )
        GatedAgent.gate.set()
        await expect(acme.locator('[data-agent="gated"]')).to_have_attribute(
            "data-state", "completed", timeout=TIMEOUT_MS
        )
        assert sockets == [f"ws://127.0.0.1:{live.port}/ws"]
        per_project = [r.url for r in requests if re.search(r"/api/projects/[^/?]+($|\?|/events)", r.url)]
        assert per_project == []  # no status fetched one after another, no polling


async def test_the_jobs_page_lists_filters_and_stays_live() -> None:
    async with live_server(secret=SECRET) as live, chromium() as browser:
        live.http.headers.update(bearer(token(("*",), ("read", "run"), subject="grace")))
        done = await finished(live, "acme", "quick")
        broken = await finished(live, "beta", "failing")
        page = await browser.new_page()
        await live_page(page, f"{live.url}/jobs#token={token(('*',), ('read',))}")
        await expect(row_of(page, done["job_id"])).to_have_attribute("data-status", "completed")
        failed = row_of(page, broken["job_id"])
        await expect(failed).to_have_attribute("data-status", "failed")
        await expect(failed.locator('[data-column="project"] a')).to_have_attribute("href", "/projects/beta")
        await expect(failed.locator('[data-column="agent"]')).to_have_text("failing")
        await expect(failed.locator('[data-column="by"]')).to_have_text("grace")
        await expect(failed.locator('[data-column="attempts"]')).to_have_text("1")
        await expect(failed.locator('[data-column="error"]')).to_contain_text("ledger for beta is offline")
        await expect(failed.locator('[data-column="duration"]')).to_have_text(re.compile(r"\d+\.\d s"))

        await page.select_option("select[name=status]", "failed")
        await page.click("#filters button[type=submit]")
        await expect(page).to_have_url(re.compile(r"/jobs\?status=failed$"))
        await expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=TIMEOUT_MS)
        await expect(row_of(page, broken["job_id"])).to_be_visible()
        await expect(row_of(page, done["job_id"])).to_have_count(0)

        again = await finished(live, "beta", "failing")  # appears without a reload; a completed one does not
        await finished(live, "acme", "quick")
        await expect(row_of(page, again["job_id"])).to_have_attribute("data-status", "failed", timeout=TIMEOUT_MS)
        await expect(page.locator("tbody#jobs tr")).to_have_count(2)
        assert await page.locator("tbody#jobs tr").first.get_attribute("data-job") == again["job_id"]


async def test_a_project_page_shows_its_recent_jobs_and_runs_a_failed_one_again() -> None:
    async with live_server(secret=SECRET) as live, chromium() as browser:
        live.http.headers.update(bearer(token(("*",), ("read", "run"))))
        broken = await finished(live, "acme", "failing")
        page = await browser.new_page()
        await live_page(page, f"{live.url}/projects/acme#token={token(('acme',), ('read', 'run'))}")
        row = row_of(page, broken["job_id"])
        await expect(row).to_have_attribute("data-status", "failed")
        await row.locator("[data-role=run-again]").click()
        newest = page.locator("tbody#history tr").first
        await expect(newest).not_to_have_attribute("data-job", broken["job_id"], timeout=TIMEOUT_MS)
        await expect(newest).to_have_attribute("data-job-agent", "failing")
        await expect(newest).to_have_attribute("data-status", "failed", timeout=TIMEOUT_MS)
        await expect(page.locator("tbody#history tr")).to_have_count(2)
        await expect(newest.locator('[data-column="by"]')).to_have_text("ada")

        reader = await browser.new_page()  # without the run right, no Run again
        await live_page(reader, f"{live.url}/projects/acme#token={token(('acme',), ('read',))}")
        await expect(row_of(reader, broken["job_id"])).to_have_attribute("data-status", "failed")
        await expect(reader.locator("[data-role=run-again]")).to_have_count(0)


async def test_a_project_page_keeps_its_last_twenty_jobs() -> None:
    async with live_server() as live, chromium() as browser:
        jobs = [await finished(live, "acme", "quick") for _ in range(22)]
        page = await browser.new_page()
        await live_page(page, f"{live.url}/projects/acme")
        await expect(page.locator("tbody#history tr")).to_have_count(20)
        await expect(page.locator("tbody#history tr").first).to_have_attribute("data-job", jobs[-1]["job_id"])
        last = await finished(live, "acme", "quick")
        await expect(page.locator("tbody#history tr").first).to_have_attribute(
            "data-job", last["job_id"], timeout=TIMEOUT_MS
        )
        await expect(page.locator("tbody#history tr")).to_have_count(20)


async def test_a_project_page_says_how_many_watch_it() -> None:
    async with live_server() as live, chromium() as browser:
        first = await browser.new_page()
        await live_page(first, f"{live.url}/projects/acme")
        await expect(first.locator("#watching")).to_have_text("1 watching", timeout=TIMEOUT_MS)
        second = await browser.new_page()
        await live_page(second, f"{live.url}/projects/acme")
        await expect(first.locator("#watching")).to_have_text("2 watching", timeout=TIMEOUT_MS)
        await expect(second.locator("#watching")).to_have_text("2 watching", timeout=TIMEOUT_MS)
        await second.close()
        await expect(first.locator("#watching")).to_have_text("1 watching", timeout=TIMEOUT_MS)


async def test_the_home_page_falls_back_to_http_where_no_websocket_gets_through() -> None:
    async with live_server() as live, chromium() as browser:
        await finished(live, "acme", "quick")
        page = await browser.new_page()

        async def refuse(ws: WebSocketRoute) -> None:
            await ws.close(code=4403, reason="blocked by the test")

        await page.route_web_socket(re.compile(r".*/ws$"), refuse)
        await page.goto(live.url)
        await expect(page.locator("body")).to_have_attribute("data-connection", "fallback", timeout=TIMEOUT_MS)
        acme = page.locator('li[data-project="acme"]')
        await expect(acme.locator('[data-agent="quick"]')).to_have_attribute("data-state", "completed")
        await live.start("acme", "gated")
        await expect(acme.locator('[data-agent="gated"]')).to_have_attribute(
            "data-state", "running", timeout=TIMEOUT_MS
        )
