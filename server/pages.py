"""The dashboard (three static pages and their modules) and jobcast.js, shipped inside the package.

No build step and nothing from a CDN: the pages work offline. The project page reads
its project id from its own URL; the server only checks that the id is valid. Behind a
proxy that serves jobcast under a prefix (``--root-path /jobcast``), the pages' links
carry the prefix; their modules find the server from their own URL.

``/jobcast.js`` is the browser client any page can import (``docs/browser.md``), and
``/jobcast.d.ts`` its types. A page on another origin loads it as a module script, which
browsers fetch with CORS: the origin must be in ``--allowed-origins``, as for the API.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import validation

WEB = Path(__file__).with_name("web")


def page(name: str, request: Request) -> HTMLResponse:
    """A page whose absolute links (``href="/…"``, ``src="/…"``) start at the server's root path."""
    root = request.scope.get("root_path", "").rstrip("/")
    html = (WEB / name).read_text().replace('href="/', f'href="{root}/').replace('src="/', f'src="{root}/')
    return HTMLResponse(html, headers={"cache-control": "no-cache"})


async def home(request: Request) -> HTMLResponse:
    return page("index.html", request)


async def jobs(request: Request) -> HTMLResponse:
    return page("jobs.html", request)


async def project(request: Request) -> HTMLResponse:
    validation.project_id(request.path_params["project_id"])
    return page("project.html", request)


async def client_module(request: Request) -> FileResponse:
    return FileResponse(WEB / "jobcast.js", media_type="text/javascript", headers={"cache-control": "no-cache"})


async def client_types(request: Request) -> FileResponse:
    return FileResponse(WEB / "jobcast.d.ts", media_type="text/plain", headers={"cache-control": "no-cache"})


async def favicon(request: Request) -> FileResponse:
    """Browsers ask for /favicon.ico on every page; an SVG answers it (all current browsers draw one)."""
    return FileResponse(WEB / "favicon.svg", media_type="image/svg+xml", headers={"cache-control": "max-age=86400"})


ROUTES = [
    Route("/favicon.ico", favicon, methods=["GET"]),
    Route("/", home, methods=["GET"]),
    Route("/jobs", jobs, methods=["GET"]),
    Route("/jobcast.js", client_module, methods=["GET"]),
    Route("/jobcast.d.ts", client_types, methods=["GET"]),
    Route("/projects/{project_id}", project, methods=["GET"]),
    Mount("/static", StaticFiles(directory=WEB / "static"), name="static"),
]
