"""The dashboard's pages and assets as a browser asks for them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.anyio


async def test_the_favicon_a_browser_asks_for_is_served(make_app: Callable[..., Any]) -> None:
    """GET /favicon.ico, which every page load makes, answers an image instead of a 404."""
    async with make_app() as app:
        response = await app.http.get("/favicon.ico")
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/svg+xml"
        assert response.text.startswith("<svg") and "max-age" in response.headers["cache-control"]
