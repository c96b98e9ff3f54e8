"""Debian's Chromium driven by Playwright, as a person's browser meets the dashboard."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright

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
    """In CI a missing browser fails the run; on a laptop without Chromium the browser tests are skipped."""
    if os.path.exists(CHROMIUM):
        return
    message = f"Chromium not found at {CHROMIUM}: apt-get install -y chromium (or set JOBCAST_CHROMIUM)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()
