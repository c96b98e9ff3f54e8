"""The dashboard in a real browser (Debian's Chromium through Playwright) against a real server."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anyio
import pytest
from playwright.async_api import Page, Request, WebSocketRoute, expect

from jobcast.server.jobs import ACTIVE_STATES, FINAL_STATES
from tests.agents import GatedAgent
from tests.browser import chromium
from tests.live import Live, live_server
from tests.servers import jobcast_server
from tests.support import WAIT

pytestmark = pytest.mark.anyio

TIMEOUT_MS = WAIT * 1000


def card(page: Page, agent: str) -> Any:
    return page.locator(f'[data-agent="{agent}"]')


async def open_project(page: Page, live: Live, project_id: str) -> None:
    await page.goto(f"{live.url}/projects/{project_id}")
    await expect(page.locator("body")).to_have_attribute(
        "data-connection", re.compile("live|fallback"), timeout=TIMEOUT_MS
    )


async def block_websockets(page: Page) -> None:
    """Refuse every WebSocket the page opens, as a proxy that blocks them would."""

    async def refuse(ws: WebSocketRoute) -> None:
        await ws.close(code=4403, reason="blocked by the test")

    await page.route_web_socket(re.compile(r".*/ws/.*"), refuse)


async def follow_a_gated_job(page: Page) -> None:
    """Start the gated agent, see it run, open its gate, see it complete."""
    gated = card(page, "gated")
    await gated.locator("[data-role=refresh]").click()
    await expect(gated).to_have_attribute("data-state", "running", timeout=TIMEOUT_MS)
    GatedAgent.gate.set()
    await expect(gated).to_have_attribute("data-state", "completed", timeout=TIMEOUT_MS)


def polling_requests(requests: list[Request]) -> list[str]:
    return [
        r.url
        for r in requests
        if r.method == "GET" and ("/events" in r.url or "_status" in r.url or re.search(r"/api/projects/[^/]+$", r.url))
    ]


async def test_refresh_shows_running_with_a_ticking_timer_then_the_result() -> None:
    """Refresh runs the job with a ticking timer, then shows the result and chart; no reload, no polling."""
    async with live_server(progress_interval=0.2) as live, chromium() as browser:
        page = await browser.new_page()
        requests: list[Request] = []
        page.on("request", lambda request: requests.append(request))
        await open_project(page, live, "acme")
        await expect(page.locator("body")).to_have_attribute("data-connection", "live")
        gated = card(page, "gated")
        await expect(gated).to_have_attribute("data-state", "idle")
        await gated.locator("[data-role=refresh]").click()
        await expect(gated).to_have_attribute("data-state", "running", timeout=TIMEOUT_MS)
        await expect(gated.locator("[data-role=refresh]")).to_be_disabled()
        await expect(gated.locator("[data-role=cancel]")).to_be_visible()
        await expect(gated.locator("[data-role=progress]")).to_contain_text("50%")
        await expect(gated.locator("[data-role=elapsed]")).to_have_text(
            re.compile(r"Running… [1-9]\d*s"), timeout=TIMEOUT_MS
        )
        GatedAgent.gate.set()
        await expect(gated).to_have_attribute("data-state", "completed", timeout=TIMEOUT_MS)
        await expect(gated.locator("[data-role=result]")).to_contain_text("acme")
        await expect(page.locator(".toast[data-status=completed]")).to_have_count(1)

        financial = card(page, "financial")
        await financial.locator("[data-role=refresh]").click()
        await expect(financial).to_have_attribute("data-state", "completed", timeout=TIMEOUT_MS)
        await expect(financial.locator("[data-role=result] svg.chart path")).to_have_count(2)
        await expect(financial.locator("[data-role=result]")).to_contain_text("Runway")
        assert polling_requests(requests) == []
        assert sum(1 for r in requests if r.resource_type == "document") == 1  # no reload


async def test_a_second_tab_sees_the_same_job() -> None:
    """A job started in one tab appears in another tab on the same project."""
    async with live_server() as live, chromium() as browser:
        first, second = await browser.new_page(), await browser.new_page()
        await open_project(first, live, "acme")
        await open_project(second, live, "acme")
        await card(first, "gated").locator("[data-role=refresh]").click()
        await expect(card(second, "gated")).to_have_attribute("data-state", "running", timeout=TIMEOUT_MS)
        await expect(card(second, "gated").locator("[data-role=refresh]")).to_be_disabled()
        GatedAgent.gate.set()
        await expect(card(second, "gated")).to_have_attribute("data-state", "completed", timeout=TIMEOUT_MS)


async def test_a_failing_agent_shows_its_error() -> None:
    """A failed job shows the failed badge and the agent's message, and notifies once."""
    async with live_server() as live, chromium() as browser:
        page = await browser.new_page()
        await open_project(page, live, "acme")
        failing = card(page, "failing")
        await failing.locator("[data-role=refresh]").click()
        await expect(failing).to_have_attribute("data-state", "failed", timeout=TIMEOUT_MS)
        await expect(failing.locator("[data-role=error]")).to_have_text("agent_error: ledger for acme is offline")
        await expect(page.locator(".toast[data-status=failed]")).to_contain_text("ledger for acme is offline")
        await expect(failing.locator("[data-role=refresh]")).to_be_enabled()


async def test_cancel_stops_a_running_job() -> None:
    """The Cancel button cancels the running job and the card says so."""
    async with live_server() as live, chromium() as browser:
        page = await browser.new_page()
        await open_project(page, live, "acme")
        gated = card(page, "gated")
        await gated.locator("[data-role=refresh]").click()
        await expect(gated).to_have_attribute("data-state", "running", timeout=TIMEOUT_MS)
        await gated.locator("[data-role=cancel]").click()
        await expect(gated).to_have_attribute("data-state", "cancelled", timeout=TIMEOUT_MS)
        await expect(gated.locator("[data-role=cancel]")).to_be_hidden()


async def test_with_websockets_blocked_the_page_falls_back_and_follows_a_job() -> None:
    """When every WebSocket is refused, the page falls back to SSE and still follows a job to the end."""
    async with live_server() as live, chromium() as browser:
        page = await browser.new_page()
        await block_websockets(page)
        await page.goto(f"{live.url}/projects/acme")
        await expect(page.locator("body")).to_have_attribute("data-connection", "fallback", timeout=TIMEOUT_MS * 2)
        await follow_a_gated_job(page)


STATE_CASES = Path(__file__).with_name("state_cases.js")
#: each check("name", ...) of state_cases.js, read from its text so that each is a test of its own
STATE_CASE_NAMES = re.findall(r'^\s+check\(\s*"([^"]+)"', STATE_CASES.read_text(), re.MULTILINE)


@pytest.fixture(scope="module")
def state_case_results() -> dict[str, dict[str, Any]]:
    """Run state_cases.js once, in the browser's own JS engine, on the page's modules as served."""

    async def run() -> list[dict[str, Any]]:
        async with live_server() as live, chromium() as browser:
            page = await browser.new_page()
            await page.goto(f"{live.url}/")
            results: list[dict[str, Any]] = await page.evaluate(STATE_CASES.read_text())
            return results

    results = anyio.run(run)
    assert sorted(result["name"] for result in results) == sorted(STATE_CASE_NAMES)  # each ran, once
    return {result["name"]: result for result in results}


@pytest.mark.parametrize("case", STATE_CASE_NAMES)
def test_the_pure_update_logic(case: str, state_case_results: dict[str, dict[str, Any]]) -> None:
    """state.js applies snapshots, transitions and progress exactly once each, and goes offline honestly."""
    result = state_case_results[case]
    assert result["ok"], f"{case}: {result['detail']}"


async def test_the_dashboards_job_states_are_the_servers() -> None:
    """state.js spells the final and active states in JavaScript: the same sets as server/jobs.py."""
    async with live_server() as live, chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{live.url}/")
        final, active = await page.evaluate(
            "import('/static/js/state.js').then((m) => [[...m.FINAL].sort(), [...m.ACTIVE].sort()])"
        )
        assert final == sorted(status.value for status in FINAL_STATES)
        assert active == sorted(status.value for status in ACTIVE_STATES)


async def test_the_home_page_lists_projects_and_opens_one() -> None:
    """/ lists projects with their agents' states and opens a project by id."""
    async with live_server() as live, chromium() as browser:
        await live.start("acme", "quick")
        page = await browser.new_page()
        await page.goto(f"{live.url}/")
        await expect(page.locator(".projects li")).to_contain_text("acme")
        await page.fill("#project-id", "bad id!")
        await page.click("#open button")
        await expect(page.locator("#open-error")).to_be_visible()
        await page.fill("#project-id", "globex")
        await page.click("#open button")
        await expect(page).to_have_url(re.compile(r"/projects/globex$"))
        await expect(card(page, "financial")).to_have_attribute("data-state", "idle", timeout=TIMEOUT_MS)


async def test_a_refresh_whose_request_fails_says_so_on_the_page() -> None:
    """A click whose request never reaches the server (the network drops it) ends as a visible message,
    not an uncaught 'Failed to fetch'."""
    async with live_server() as live, chromium() as browser:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: errors.append(message.text) if "Uncaught" in message.text else None)
        await open_project(page, live, "acme")
        await page.route(re.compile(r".*/agents/gated/refresh$"), lambda route: route.abort())
        await card(page, "gated").locator("[data-role=refresh]").click()
        await expect(page.locator(".toast[data-failed=refresh]")).to_contain_text("gated: could not reach the server")
        await expect(card(page, "gated").locator("[data-role=refresh]")).to_be_enabled()  # and it can be tried again
        assert errors == []


async def test_the_home_page_says_so_when_a_request_fails() -> None:
    """A request the home page makes that cannot reach the server ends as a visible message, not an exception."""
    async with live_server() as live, chromium() as browser:
        await live.start("acme", "quick")
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))

        async def refuse(ws: WebSocketRoute) -> None:
            await ws.close(code=4403, reason="blocked by the test")

        await page.route_web_socket(re.compile(r".*/ws$"), refuse)  # no socket, then no HTTP fallback either
        await page.route(re.compile(r".*/api/projects/acme$"), lambda route: route.abort())
        await page.goto(f"{live.url}/")
        await expect(page.locator("body")).to_have_attribute("data-connection", "offline", timeout=TIMEOUT_MS)
        await expect(page.locator("#connection")).to_have_text("Offline, reconnecting…")
        await page.route(re.compile(r".*/api/projects$"), lambda route: route.abort())
        await page.reload()
        await expect(page.locator("#empty")).to_contain_text("Could not load: cannot reach the server")
        assert errors == []


async def test_a_server_restart_mid_job_shows_the_job_interrupted_once(tmp_path: Path) -> None:
    """Kill the server mid-job and start it again: while it is gone the card stops its timer ("last seen") and its
    buttons are disabled with a reason, and nothing throws; back, the page shows the job failed, notifying once."""
    args = [
        "--store", f"sqlite:///{tmp_path / 'jobs.db'}", "--demo-seconds", "60",
        "--agent", "tests.agents:SleepyAgent", "--agent", "jobcast.agents.builtin:FinancialAgent",
    ]  # fmt: skip
    log = tmp_path / "server.log"
    async with chromium() as browser:
        page = await browser.new_page()
        # Uncaught exceptions and unhandled rejections ("Uncaught (in promise) TypeError: Failed to fetch"); the
        # browser's own lines about refused connections are not the page's and are left out.
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: errors.append(message.text) if "Uncaught" in message.text else None)
        with jobcast_server(args, log) as server:
            port = server.port
            await page.goto(f"{server.url}/projects/acme")
            await expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=TIMEOUT_MS)
            sleepy = card(page, "sleepy")
            await sleepy.locator("[data-role=refresh]").click()
            await expect(sleepy).to_have_attribute("data-state", "running", timeout=TIMEOUT_MS)
            server.kill()
            await expect(sleepy).to_have_attribute("data-offline", "true", timeout=TIMEOUT_MS)
            await expect(sleepy.locator("[data-role=elapsed]")).to_have_text(
                re.compile(r"Last seen running [1-9]\d*s ago"), timeout=TIMEOUT_MS
            )
            for role in ("refresh", "cancel"):
                await expect(sleepy.locator(f"[data-role={role}]")).to_be_disabled()
                await expect(sleepy.locator(f"[data-role={role}]")).to_have_attribute("title", re.compile("Offline"))
            await expect(page.locator("#offline")).to_be_visible()
            await expect(page.locator("#offline")).to_contain_text("reconnecting")
            await expect(page.locator("[data-role=refresh][disabled]")).to_have_count(2)
        with jobcast_server(args, log, port=port):
            await expect(sleepy).to_have_attribute("data-state", "failed", timeout=TIMEOUT_MS * 2)
            await expect(sleepy.locator("[data-role=error]")).to_contain_text("interrupted")
            await expect(page.locator("body")).to_have_attribute("data-connection", "live")
            await expect(page.locator(".toast[data-status=failed]")).to_have_count(1)
            await expect(sleepy).to_have_attribute("data-offline", "false")
            await expect(page.locator("#offline")).to_be_hidden()
            await sleepy.locator("[data-role=refresh]").click()  # and it works again
            await expect(sleepy).to_have_attribute("data-state", "running", timeout=TIMEOUT_MS)
            await expect(sleepy.locator("[data-role=elapsed]")).to_have_text(re.compile(r"Running… \d+s"))
            await expect(page.locator(".toast[data-status=failed]")).to_have_count(1)
    assert errors == [], errors


async def test_with_websockets_and_sse_blocked_the_page_long_polls() -> None:
    """With WebSockets refused and the SSE stream blocked, the page long-polls and still follows a job."""
    async with live_server() as live, chromium() as browser:
        page = await browser.new_page()
        await block_websockets(page)
        await page.route(re.compile(r".*/events/stream.*"), lambda route: route.abort())
        await page.goto(f"{live.url}/projects/acme")
        await expect(page.locator("body")).to_have_attribute("data-transport", "poll", timeout=TIMEOUT_MS * 3)
        await expect(page.locator("body")).to_have_attribute("data-connection", "fallback", timeout=TIMEOUT_MS)
        await follow_a_gated_job(page)


async def test_a_queued_card_says_where_it_stands_and_what_it_waits_for() -> None:
    """Held by the project limit, the card reads "Queued: 1st in line, waiting for the project limit (1 of 1)"."""
    async with live_server(max_running_per_project=1) as live, chromium() as browser:
        page = await browser.new_page()
        await open_project(page, live, "acme")
        await live.start("acme", "gated")
        await expect(card(page, "gated")).to_have_attribute("data-state", "running", timeout=TIMEOUT_MS)
        sleepy = card(page, "sleepy")
        await sleepy.locator("[data-role=refresh]").click()
        await expect(sleepy).to_have_attribute("data-state", "queued", timeout=TIMEOUT_MS)
        await expect(sleepy.locator("[data-role=step]")).to_have_text(
            "Queued: 1st in line, waiting for the project limit (1 of 1)", timeout=TIMEOUT_MS
        )
        GatedAgent.gate.set()
        await expect(sleepy).to_have_attribute("data-state", "completed", timeout=TIMEOUT_MS)


async def test_a_card_says_when_a_job_retries_and_how_long_a_run_has_left() -> None:
    """ "Retrying in N s (attempt 2 of 2): provider overloaded" while it waits; "about N s left" once the agent has a
    history."""
    from tests.agents import OverloadedAgent, TimedAgent

    OverloadedAgent.retry_after = 30
    TimedAgent.seconds = 1.0
    agents = ["tests.agents:OverloadedAgent", "tests.agents:TimedAgent"]
    try:
        async with live_server(agents=agents, progress_interval=0.1) as live, chromium() as browser:
            for _ in range(3):  # a history for the estimate
                TimedAgent.seconds = 0.2
                job = await live.start("acme", "timed")
                await live.wait_until(lambda job=job: _completed(live, job["job_id"]))
            page = await browser.new_page()
            await open_project(page, live, "acme")
            overloaded = card(page, "overloaded")
            await overloaded.locator("[data-role=refresh]").click()
            await expect(overloaded).to_have_attribute("data-state", "retrying", timeout=TIMEOUT_MS)
            await expect(overloaded.locator("[data-role=step]")).to_have_text(
                re.compile(r"Retrying in (29|30) s \(attempt 2 of 2\): provider overloaded"), timeout=TIMEOUT_MS
            )
            await expect(overloaded.locator("[data-role=cancel]")).to_be_enabled()
            TimedAgent.seconds = 20.0
            timed = card(page, "timed")
            await timed.locator("[data-role=refresh]").click()
            await expect(timed.locator("[data-role=elapsed]")).to_have_text(
                re.compile(r"Running… \d+s · (taking longer than usual|about \d+ s left)"), timeout=TIMEOUT_MS
            )
            await expect(timed.locator("[data-role=elapsed]")).to_contain_text(
                "taking longer than usual", timeout=TIMEOUT_MS
            )
            await timed.locator("[data-role=cancel]").click()
    finally:
        OverloadedAgent.retry_after = None
        TimedAgent.seconds = 0.3


async def _completed(live: Live, job_id: str) -> bool:
    return bool((await live.http.get(f"/api/jobs/{job_id}")).json()["status"] == "completed")


async def test_a_card_shows_streamed_text_as_it_comes_and_after_a_reload_mid_stream() -> None:
    from tests.agents import STREAMED_TEXT, StreamingAgent

    async with live_server(agents=["tests.agents:StreamingAgent"]) as live, chromium() as browser:
        page = await browser.new_page()
        await open_project(page, live, "acme")
        streaming = card(page, "streaming")
        await streaming.locator("[data-role=refresh]").click()
        assert await anyio.to_thread.run_sync(StreamingAgent.halfway.wait, WAIT)
        half = STREAMED_TEXT[: 1000 * 6]
        output = streaming.locator("[data-role=output]")
        await expect(output).to_have_text(half, timeout=TIMEOUT_MS)
        await page.reload()
        await expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=TIMEOUT_MS)
        await expect(card(page, "streaming").locator("[data-role=output]")).to_have_text(half, timeout=TIMEOUT_MS)
        StreamingAgent.gate.set()
        await expect(card(page, "streaming")).to_have_attribute("data-state", "completed", timeout=TIMEOUT_MS)
        await expect(card(page, "streaming").locator("[data-role=output]")).to_have_text(
            STREAMED_TEXT, timeout=TIMEOUT_MS
        )
        # Text, never markup: the card's output has no elements in it.
        assert await card(page, "streaming").locator("[data-role=output] *").count() == 0
