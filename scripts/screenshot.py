"""Take docs/dashboard.png: a real server, the built-in agents, one result in and one job mid-run.

.venv/bin/python scripts/screenshot.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import httpx
from playwright.async_api import async_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.servers import jobcast_server  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "dashboard.png"


def wait_for(url: str, field: str, value: str) -> None:
    deadline = time.monotonic() + 60
    while httpx.get(url).json()["agents"]["financial"]["job"][field] != value:
        assert time.monotonic() < deadline
        time.sleep(0.2)


async def shoot(url: str) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1100, "height": 760})
        await page.goto(f"{url}/projects/acme")
        await page.wait_for_selector('[data-agent="financial"][data-state="completed"]')
        await page.click('[data-agent="performance"] [data-role="refresh"]')
        await page.wait_for_function("document.querySelector('[data-agent=performance] .fill').style.width >= '50%'")
        await page.wait_for_timeout(1500)  # let the timer tick past a round second for the picture
        await page.screenshot(path=str(OUT), full_page=True)
        await browser.close()


def main() -> None:
    args = ["--store", "memory://", "--demo-seconds", "8"]
    with jobcast_server(args, Path("/tmp/jobcast-screenshot.log")) as server:
        httpx.post(f"{server.url}/api/projects/acme/agents/financial/refresh")
        wait_for(f"{server.url}/api/projects/acme", "status", "completed")
        asyncio.run(shoot(server.url))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
