"""Debian's Chromium driven by Playwright, as a person's browser meets the dashboard."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator

from playwright.async_api import Browser, async_playwright

from tests.support import require_program

CHROMIUM = os.environ.get("JOBCAST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

# The flags this machine's closed network needs (see the env notes): no background calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    hint = "apt-get install -y chromium (or set JOBCAST_CHROMIUM)"
    require_program(CHROMIUM, f"Chromium not found at {CHROMIUM}: {hint}")


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()
