"""The dashboard: two static pages and their modules, shipped inside the package.

No build step and nothing from a CDN: the pages work offline. The project page reads
its project id from its own URL; the server only checks that the id is valid.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import validation

WEB = Path(__file__).with_name("web")


async def home(request: Request) -> FileResponse:
    return FileResponse(WEB / "index.html", headers={"cache-control": "no-cache"})


async def project(request: Request) -> FileResponse:
    validation.project_id(request.path_params["project_id"])
    return FileResponse(WEB / "project.html", headers={"cache-control": "no-cache"})


async def favicon(request: Request) -> FileResponse:
    """Browsers ask for /favicon.ico on every page; an SVG answers it (all current browsers draw one)."""
    return FileResponse(WEB / "favicon.svg", media_type="image/svg+xml", headers={"cache-control": "max-age=86400"})


ROUTES = [
    Route("/favicon.ico", favicon, methods=["GET"]),
    Route("/", home, methods=["GET"]),
    Route("/projects/{project_id}", project, methods=["GET"]),
    Mount("/static", StaticFiles(directory=WEB / "static"), name="static"),
]
