"""jobcast.js, the browser client, as a page on another origin meets it, in Chromium.

The page is served by a real web server on another port (another origin) listed in
``--allowed-origins``; it imports ``/jobcast.js`` from the jobcast server, follows a
project over each transport, starts and cancels jobs, and stays live while its short
tokens expire and are renewed through its own backend's ``/token`` route.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import threading
import time
from collections.abc import Iterator

import jwt
import pytest
from playwright.async_api import Page, Request, expect

from tests.agents import GatedAgent
from tests.browser import chromium
from tests.guarded import SECRET
from tests.live import live_server
from tests.prefix_proxy import prefix_proxy
from tests.support import WAIT, eventually_async

pytestmark = pytest.mark.anyio

TIMEOUT_MS = WAIT * 1000

#: the whole integration a page needs: import, connect, two handlers, two buttons
PAGE = """<!doctype html>
<title>Acme reports</title>
<p id="status">waiting</p><progress id="bar" max="100" value="0"></progress>
<button id="run">Run</button><button id="stop">Cancel</button>
<script type="module">
  import { connect } from "JOBCAST/jobcast.js";
  const getToken = () => fetch("/token").then((r) => (r.ok ? r.text() : Promise.reject(new Error(`${r.status}`))));
  const transports = new URLSearchParams(location.search).get("transports")?.split(",");
  const project = connect({ url: "JOBCAST", project: "acme", token: await getToken(), getToken, transports });
  project.on("job", ({ agent, job }) => { document.getElementById("status").textContent = `${agent}: ${job.status}`; });
  project.on("progress", ({ percent }) => { document.getElementById("bar").value = percent ?? 0; });
  document.getElementById("run").onclick = () => project.refresh("gated");
  document.getElementById("stop").onclick = () => project.cancel("gated");
  project.on("status", ({ status }) => (window.statuses ??= []).push(status));
  window.project = project;
</script>
"""


@dataclasses.dataclass
class TokenIssuer:
    """The page's own backend: mints a jobcast token with PyJWT alone, as any app would."""

    ttl: float = 600.0
    #: the calls (1-based) that fail, like a backend that is briefly down
    failing: frozenset[int] = frozenset()
    calls: int = 0

    def mint(self) -> str | None:
        self.calls += 1
        if self.calls in self.failing:
            return None
        now = time.time()
        claims = {"sub": "alice", "iat": int(now), "exp": now + self.ttl,
                  "jobcast": {"projects": ["acme"], "rights": ["read", "run"]}}  # fmt: skip
        return jwt.encode(claims, SECRET, algorithm="HS256")


@dataclasses.dataclass
class AppSite:
    """Another origin: a web server on its own port serving the page and its /token route."""

    origin: str
    issuer: TokenIssuer
    #: set once jobcast runs (jobcast must know this site's origin before it starts)
    jobcast_url: str = ""


@contextlib.contextmanager
def app_site(issuer: TokenIssuer) -> Iterator[AppSite]:
    site: AppSite

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            if self.path.startswith("/token"):
                token = issuer.mint()
                self.answer(200 if token else 503, (token or "down").encode(), "text/plain")
            else:
                self.answer(200, PAGE.replace("JOBCAST", site.jobcast_url).encode(), "text/html")

        def answer(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    site = AppSite(f"http://127.0.0.1:{server.server_address[1]}", issuer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)


async def run_and_cancel_then_complete(page: Page) -> None:
    status = page.locator("#status")
    await page.click("#run")
    await expect(status).to_have_text("gated: running", timeout=TIMEOUT_MS)
    await expect(page.locator("#bar")).to_have_js_property("value", 50, timeout=TIMEOUT_MS)
    await page.click("#stop")
    await expect(status).to_have_text("gated: cancelled", timeout=TIMEOUT_MS)
    await page.click("#run")
    await expect(status).to_have_text("gated: running", timeout=TIMEOUT_MS)
    GatedAgent.gate.set()
    await expect(status).to_have_text("gated: completed", timeout=TIMEOUT_MS)


async def wait_for_status(page: Page, status: str) -> None:
    await page.wait_for_function(f"window.project?.status === {status!r}", timeout=TIMEOUT_MS)


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_a_page_on_another_origin_follows_runs_and_cancels_a_job(transport: str) -> None:
    """Ten lines on another origin: live over each transport (CORS, a preflight for the token), run, cancel."""
    with app_site(TokenIssuer()) as site:
        async with live_server(secret=SECRET, allowed_origins=(site.origin,)) as live, chromium() as browser:
            site.jobcast_url = live.url
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(f"{site.origin}/?transports={transport}")
            await wait_for_status(page, "live" if transport == "ws" else "fallback")
            await run_and_cancel_then_complete(page)
            assert await page.evaluate("window.project.transport") == transport
            assert await page.evaluate("window.project.state.agents.gated.last_result") == {
                "project": "acme", "opened": True,
            }  # fmt: skip
            assert "unauthorized" not in await page.evaluate("window.statuses") and not errors


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_a_page_stays_live_for_longer_than_its_tokens_last(transport: str) -> None:
    """3 s tokens: renewed before expiry, and after the server refuses an expired one (a 1008 close, the end of
    an SSE stream, a long-poll's 401) when a renewal failed; never unauthorized, on each transport."""
    issuer = TokenIssuer(ttl=3.0, failing=frozenset({2}))  # the first renewal before expiry fails
    connected = "live" if transport == "ws" else "fallback"
    with app_site(issuer) as site:
        async with live_server(secret=SECRET, allowed_origins=(site.origin,)) as live, chromium() as browser:
            site.jobcast_url = live.url
            page = await browser.new_page()
            await page.goto(f"{site.origin}/?transports={transport}")
            await wait_for_status(page, connected)
            # call 2 (before expiry) fails; the server refuses the token at expiry; call 3 renews; and on
            await eventually_async(lambda: issuer.calls >= 5, what="tokens renewed over several lifetimes")
            await wait_for_status(page, connected)
            assert await page.evaluate("window.project.transport") == transport
            await run_and_cancel_then_complete(page)
            statuses = await page.evaluate("window.statuses")
            assert "unauthorized" not in statuses
            assert statuses.count("connecting") >= 2  # it did reconnect with a new token, from its cursor


async def test_without_get_token_an_expired_token_stops_with_unauthorized() -> None:
    """No getToken: the 1008 at expiry is final, and the status says why."""
    issuer = TokenIssuer(ttl=2.0)
    with app_site(issuer) as site:
        async with live_server(secret=SECRET, allowed_origins=(site.origin,)) as live, chromium() as browser:
            site.jobcast_url = live.url
            page = await browser.new_page()
            await page.goto(site.origin)
            await wait_for_status(page, "live")
            token = issuer.mint()
            await page.evaluate(
                """async ([url, token]) => {
                  const { connect } = await import(`${url}/jobcast.js`);
                  window.bare = connect({ url, project: "acme", token });
                  window.codes = [];
                  window.bare.on("status", ({ status, code }) => status === "unauthorized" && window.codes.push(code));
                }""",
                [live.url, token],
            )
            await page.wait_for_function("window.codes.length > 0", timeout=TIMEOUT_MS)
            assert await page.evaluate("window.codes") == ["token_expired"]


async def test_cors_answers_the_listed_origin_with_preflight_for_the_token_and_json() -> None:
    """A preflight for Authorization and Content-Type passes for a listed origin; others get 403 origin_not_allowed."""
    listed = "https://app.example.com"
    async with live_server(secret=SECRET, allowed_origins=(listed,)) as live:
        preflight = {
            "Origin": listed,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        }
        answer = await live.http.options("/api/projects/acme/agents/gated/refresh", headers=preflight)
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == listed
        allowed = answer.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed
        module = await live.http.get("/jobcast.js", headers={"Origin": listed})
        assert module.status_code == 200 and module.headers["content-type"].startswith("text/javascript")
        assert module.headers["access-control-allow-origin"] == listed
        assert "export function connect" in module.text
        types = await live.http.get("/jobcast.d.ts")
        assert types.status_code == 200 and "export function connect(options: ConnectOptions): Project;" in types.text
        stranger = await live.http.get("/jobcast.js", headers={"Origin": "https://evil.example.com"})
        assert (stranger.status_code, stranger.json()["error"]["code"]) == (403, "origin_not_allowed")


async def test_the_dashboard_works_behind_a_proxy_under_a_path_prefix() -> None:
    """--root-path /jobcast behind a proxy that strips it: every link, script, request and socket keeps the prefix."""
    async with live_server(root_path="/jobcast") as live, prefix_proxy("/jobcast", live.port) as proxy:
        async with chromium() as browser:
            page = await browser.new_page()
            requests: list[Request] = []
            page.on("request", lambda request: requests.append(request))
            await page.goto(f"{proxy.url}/")
            await page.fill("#project-id", "acme")
            await page.click("#open button")
            await expect(page).to_have_url(f"{proxy.url}/projects/acme")
            await expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=TIMEOUT_MS)
            gated = page.locator('[data-agent="gated"]')
            await gated.locator("[data-role=refresh]").click()
            await expect(gated).to_have_attribute("data-state", "running", timeout=TIMEOUT_MS)
            GatedAgent.gate.set()
            await expect(gated).to_have_attribute("data-state", "completed", timeout=TIMEOUT_MS)
            await page.click("a.brand")
            await expect(page.locator(".projects li a")).to_have_attribute("href", "/jobcast/projects/acme")
            await expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=TIMEOUT_MS)
            await page.click("nav a")
            await expect(page).to_have_url(f"{proxy.url}/jobs")
            await expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=TIMEOUT_MS)
            await expect(page.locator('tbody#jobs [data-column="project"] a')).to_have_attribute(
                "href", "/jobcast/projects/acme"
            )
    paths = {request.url.split(str(proxy.port), 1)[1] for request in requests}
    assert all(path.startswith("/jobcast/") for path in paths), sorted(paths)
    assert {"/jobcast/jobcast.js", "/jobcast/static/js/project.js", "/jobcast/static/js/jobs.js"} <= paths
    assert any(line.startswith("GET /jobcast/ws/projects/acme") for line in proxy.requests)
    assert "GET /jobcast/ws" in proxy.requests, proxy.requests
