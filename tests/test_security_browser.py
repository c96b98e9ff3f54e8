"""Security in a real browser (Debian's Chromium through Playwright) against a real ``jobcast serve`` with a secret."""

from __future__ import annotations

import contextlib
import http.server
import re
import threading
from collections.abc import Iterator

import httpx
import pytest
from playwright.async_api import expect

from tests.browser import chromium
from tests.guarded import SECRET, Tokens, bearer
from tests.servers import JobcastServer, jobcast_server
from tests.support import WAIT, wait_for_log

pytestmark = pytest.mark.anyio

TIMEOUT_MS = WAIT * 1000
ARGS = ["--store", "memory://", "--demo-seconds", "30", "--agent", "tests.agents:QuickAgent"]

FOREIGN_PAGE = "<!doctype html><title>a page from elsewhere</title><p>nothing to see</p>"

#: what the foreign page tries, with a token it somehow holds: a WebSocket, an SSE stream, a POST
ATTEMPTS = """
async ({ server, token }) => {
  const ws = await new Promise((resolve) => {
    const protocols = ["jobcast", "jobcast.bearer." + token];
    const socket = new WebSocket(server.replace("http", "ws") + "/ws/projects/acme", protocols);
    socket.onopen = () => resolve("open");
    socket.onclose = (event) => resolve("closed " + event.code);
  });
  let sse = "blocked";
  try {
    const headers = { Authorization: "Bearer " + token };
    const response = await fetch(server + "/api/projects/acme/events/stream", { headers });
    sse = "answered " + response.status;
  } catch (error) {}
  await fetch(server + "/api/projects/acme/agents/quick/refresh", { method: "POST", mode: "no-cors" }).catch(() => {});
  return { ws, sse };
}
"""


#: the page's pure helpers: SSE frames read in chunks with fetch, and the token in a fragment
PURE_CASES = """
async () => {
  const { sseMessages } = await import("/jobcast.js");
  const { tokenFromFragment } = await import("/static/js/auth.js");
  const chunk = 'retry: 2000\\n\\nid: e:1\\nevent: job\\ndata: {"type":"job"}\\n\\n';
  const first = sseMessages(chunk + ': keep-alive\\n\\ndata: {"ty');
  const second = sseMessages(first.rest + 'pe":"progress"}\\r\\n\\r\\n');
  return {
    first: first.messages, rest: first.rest, second: second.messages,
    token: tokenFromFragment("#token=a.b_c-d&x=1"), none: tokenFromFragment(""),
  };
}
"""


@pytest.fixture(scope="module")
def tokens() -> Tokens:
    return Tokens()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, tokens: Tokens) -> Iterator[JobcastServer]:
    log = tmp_path_factory.mktemp("browser") / "server.log"
    with jobcast_server(ARGS, log, env={"JOBCAST_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}) as server:
        yield server
    text = log.read_text()
    assert SECRET not in text and not any(token in text for token in tokens.minted)


class _ForeignPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        body = FOREIGN_PAGE.encode()
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def foreign_site() -> Iterator[str]:
    """A real web server on another port of this machine: another origin, in the same address space."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ForeignPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/page.html"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)


async def wait_for_server_log(server: JobcastServer, *needles: str) -> None:
    await wait_for_log(lambda: server.log, *needles)


async def test_a_page_from_a_foreign_origin_cannot_subscribe(guarded: JobcastServer, tokens: Tokens) -> None:
    """Even holding a valid token, a page from another origin gets no WebSocket, no stream, and starts no job."""
    token = tokens.mint(("acme",))
    with foreign_site() as foreign:
        async with chromium() as browser:
            page = await browser.new_page()
            await page.goto(foreign)
            outcome = await page.evaluate(ATTEMPTS, {"server": guarded.url, "token": token})
    assert outcome == {"ws": "closed 1006", "sse": "blocked"}
    # The server saw and refused each attempt (the browser did not just give up on its own).
    for method, path in [("WebSocket", "/ws/projects/acme"), ("OPTIONS", "/api/projects/acme/events/stream"),
                         ("POST", "/api/projects/acme/agents/quick/refresh")]:  # fmt: skip
        await wait_for_server_log(guarded, f"refused {method} {path} ", "403 origin_not_allowed")
    async with httpx.AsyncClient(base_url=guarded.url, headers=bearer(token), timeout=WAIT) as http:
        status = (await http.get("/api/projects/acme")).json()
    assert status["agents"]["quick"]["job"] is None


async def test_the_dashboard_works_with_a_token_in_the_url_fragment(guarded: JobcastServer, tokens: Tokens) -> None:
    """`/projects/acme#token=...` goes live over a WebSocket, runs a job, drops the fragment and keeps the token."""
    token = tokens.mint(("acme",))
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{guarded.url}/projects/acme#token={token}")
        await expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=TIMEOUT_MS)
        assert "#" not in page.url and token not in page.url
        assert await page.evaluate("sessionStorage.getItem('jobcast.token')") == token
        quick = page.locator('[data-agent="quick"]')
        await quick.locator("[data-role=refresh]").click()
        await expect(quick).to_have_attribute("data-state", "completed", timeout=TIMEOUT_MS)
        await page.goto(f"{guarded.url}/")  # the same tab keeps the token for the other page
        await expect(page.locator(".projects li")).to_contain_text("acme", timeout=TIMEOUT_MS)
        assert await page.evaluate(PURE_CASES) == {
            "first": [{"type": "job"}],
            "rest": 'data: {"ty',
            "second": [{"type": "progress"}],
            "token": "a.b_c-d",
            "none": None,
        }


async def test_without_a_valid_token_the_dashboard_says_so(guarded: JobcastServer, tokens: Tokens) -> None:
    """With no token the page stops at 'unauthorized'; a token that expires while open closes it the same way."""
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{guarded.url}/projects/acme")
        await expect(page.locator("body")).to_have_attribute("data-connection", "unauthorized", timeout=TIMEOUT_MS)
        await expect(page.locator(".toast[data-auth=auth_required]")).to_contain_text("needs an access token")

        page = await browser.new_page()
        await page.goto(f"{guarded.url}/projects/acme#token={tokens.mint(('acme',), ttl=3)}")
        await expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=TIMEOUT_MS)
        await expect(page.locator("body")).to_have_attribute("data-connection", "unauthorized", timeout=TIMEOUT_MS)
        await expect(page.locator(".toast[data-auth=token_expired]")).to_contain_text(re.compile("expired"))


#: what a foreign page can do without any token: GETs that browsers send without an Origin
SIMPLE_GETS = """
async ({ server }) => {
  const image = await new Promise((resolve) => {
    const img = new Image();
    img.onload = () => resolve("loaded");
    img.onerror = () => resolve("error");
    img.src = server + "/quick_agent/status/acme";
  });
  await fetch(server + "/quick_agent/status/acme", { mode: "no-cors" }).catch(() => {});
  return image;
}
"""


async def test_in_open_mode_a_foreign_page_cannot_start_a_job_with_a_simple_get(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The old app's GET starts a job; from another site's <img> or no-cors fetch the server refuses it."""
    log = tmp_path_factory.mktemp("open") / "server.log"
    with jobcast_server(ARGS, log, env={"JOBCAST_SECRET": "", "PYTHONUNBUFFERED": "1"}) as server:
        with foreign_site() as foreign:
            async with chromium() as browser:
                page = await browser.new_page()
                await page.goto(foreign)
                assert await page.evaluate(SIMPLE_GETS, {"server": server.url}) == "error"
        await wait_for_server_log(server, "refused GET /quick_agent/status/acme ", "403 origin_not_allowed")
        async with httpx.AsyncClient(base_url=server.url, timeout=WAIT) as http:
            status = (await http.get("/api/projects/acme")).json()
    assert status["agents"]["quick"]["job"] is None
