"""The JSON API under /api, /healthz (liveness), /readyz (readiness) and /openapi.json.

Every /api route checks the request's token first (see :mod:`server.access`); /healthz,
/readyz and /openapi.json stay open: they tell load, health and the API's shape, never
project data.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import access, cursor, validation
from .auth import Grant
from .engine import Engine
from .errors import BodyTooLarge, InvalidInput, JobNotFound, StoreUnavailable
from .hub import Hub
from .jobs import Job, JobStatus
from .metrics import CONTENT_TYPE, PROCESS_TTL, Counts, Metrics, record_gauges, render
from .openapi import openapi_schema, package_version
from .scheduling import IfActive, Priority
from .store import JobQuery
from .store.base import history_key
from .views import agents_view, project_view
from .wire import MAX_INBOUND_BYTES


def engine_of(request: Request) -> Engine:
    engine: Engine = request.state.engine
    return engine


@dataclasses.dataclass(frozen=True)
class Target:
    """A checked (project, agent) of a route, and the grant that allowed it."""

    engine: Engine
    grant: Grant
    project_id: str
    agent: str


def resolve_target(request: Request, right: str) -> Target:
    """The token, then the project id, then the token's scope, then the agent name: in that order."""
    grant, project_id = access.project_access(request, right)
    engine = engine_of(request)
    agent = request.path_params["agent"]
    engine.agent(agent)
    return Target(engine, grant, project_id, agent)


@dataclasses.dataclass(frozen=True)
class RefreshOptions:
    """A refresh's optional JSON body: ``{"priority": "high" | "normal" | "low", "if_active": ...}``."""

    priority: Priority = Priority.NORMAL
    if_active: IfActive = IfActive.ATTACH

    @classmethod
    def parse(cls, body: object) -> RefreshOptions:
        if body is None:
            return cls()
        if not isinstance(body, dict):
            raise InvalidInput("invalid_body", 'the body must be a JSON object like {"priority": "high"}')
        unknown = sorted(set(body) - {"priority", "if_active"})
        if unknown:
            raise InvalidInput(
                "unknown_field", f"unknown field {unknown[0][:40]!r}; the fields are priority, if_active"
            )
        return cls(
            priority=Priority.parse(body["priority"]) if "priority" in body else Priority.NORMAL,
            if_active=IfActive.parse(body["if_active"]) if "if_active" in body else IfActive.ATTACH,
        )


async def json_body(request: Request, limit: int = MAX_INBOUND_BYTES) -> Any:
    """The request's JSON body (None when empty), read no further than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidInput("invalid_json", "the body is not valid JSON") from None


async def start_job(request: Request, options: RefreshOptions | None = None) -> tuple[Job, bool]:
    """Start (or join) the route's job, counted against the token's start limit."""
    target = resolve_target(request, "run")
    options = options or RefreshOptions()
    await access.check_start(request, target.grant)
    return await target.engine.start(
        target.project_id,
        target.agent,
        priority=options.priority,
        if_active=options.if_active,
        started_by=target.grant.subject,
        requester=access.requester(request, target.grant),
    )


async def refresh(request: Request) -> JSONResponse:
    resolve_target(request, "run")  # the token and the path are checked before the body is read
    options = RefreshOptions.parse(await json_body(request))
    job, deduplicated = await start_job(request, options)
    body = {"job": await engine_of(request).with_place(job), "deduplicated": deduplicated}
    return JSONResponse(body, status_code=200 if deduplicated else 202)


async def cancel(request: Request) -> JSONResponse:
    target = resolve_target(request, "run")
    job, already = await target.engine.cancel(target.project_id, target.agent)
    return JSONResponse({"job": job.to_dict()}, status_code=200 if already else 202)


async def project_status(request: Request) -> JSONResponse:
    _, project_id = access.project_access(request, "read")
    view = await project_view(engine_of(request), project_id)
    view["watching"] = await request.state.presence.watching(project_id)
    return JSONResponse(view)


async def agent_job(request: Request) -> JSONResponse:
    target = resolve_target(request, "read")
    job = await target.engine.store.latest_job(target.project_id, target.agent)
    if job is None:
        raise JobNotFound(f"project {target.project_id!r} has no {target.agent!r} job yet")
    return JSONResponse(await target.engine.with_place(job))


async def job_by_id(request: Request) -> JSONResponse:
    """A job of a project outside the token's scope is answered exactly as a job that does not exist."""
    grant = access.require(request, "read")
    job_id = request.path_params["job_id"]
    job = await engine_of(request).store.get_job(job_id)
    if job is None or not grant.covers(job.project_id):
        raise JobNotFound(f"no job with id {job_id[:80]!r}")
    return JSONResponse(await engine_of(request).with_place(job))


async def history(request: Request) -> JSONResponse:
    _, project_id = access.project_access(request, "read")
    engine = engine_of(request)
    agent = request.query_params.get("agent") or None
    if agent is not None:
        engine.agent(agent)
    limit = validation.bounded_int("limit", request.query_params.get("limit"), default=50, low=1, high=500)
    jobs = await engine.store.list_jobs(project_id, agent, limit)
    return JSONResponse({"project_id": project_id, "jobs": [job.to_dict() for job in jobs]})


#: longest ``started_by`` filter accepted (a token subject is far shorter)
MAX_STARTED_BY = 200


async def all_jobs(request: Request) -> JSONResponse:
    """History across projects, newest first, a page at a time; only projects the token may read."""
    grant = access.require(request, "read")
    params = request.query_params
    projects = grant.projects
    if project := params.get("project"):
        grant.require("read", validation.project_id(project))
        projects = frozenset({project})
    agent = params.get("agent") or None
    if agent is not None:
        engine_of(request).agent(agent)
    limit = validation.bounded_int("limit", params.get("limit"), default=50, low=1, high=500)
    query = JobQuery(
        projects=projects,
        agent=agent,
        status=_status_filter(params.get("status")),
        started_by=_started_by_filter(params.get("started_by")),
        before=cursor.decode_history(params["before"]) if params.get("before") else None,
        limit=limit + 1,  # one more than asked: whether there is a next page
    )
    jobs = await engine_of(request).store.find_jobs(query)
    next_page = cursor.encode_history(history_key(jobs[limit - 1])) if len(jobs) > limit else None
    return JSONResponse({"jobs": [job.to_dict() for job in jobs[:limit]], "next": next_page})


def _status_filter(raw: str | None) -> JobStatus | None:
    if not raw:
        return None
    try:
        return JobStatus(raw)
    except ValueError:
        names = ", ".join(status.value for status in JobStatus)
        raise InvalidInput("invalid_status", f"status must be one of {names}, not {raw[:40]!r}") from None


def _started_by_filter(raw: str | None) -> str | None:
    if raw is not None and len(raw) > MAX_STARTED_BY:
        raise InvalidInput("invalid_started_by", f"started_by is at most {MAX_STARTED_BY} characters")
    return raw or None


async def projects(request: Request) -> JSONResponse:
    """Only the projects the token covers."""
    grant = access.require(request, "read")
    ids = await engine_of(request).store.project_ids()
    return JSONResponse({"projects": [project_id for project_id in ids if grant.covers(project_id)]})


async def agents(request: Request) -> JSONResponse:
    access.require(request, "read")
    return JSONResponse({"agents": agents_view(engine_of(request))})


async def healthz(request: Request) -> JSONResponse:
    engine = engine_of(request)
    return JSONResponse(
        {
            "status": "ok",
            "store": engine.store.kind,
            "epoch": engine.store.epoch,
            "threads": engine.settings.threads,
            "busy_threads": engine.busy_threads,
            "subscribers": request.state.hub.subscriber_count,
            "waiting_polls": request.state.hub.waiting_polls,
            "pid": os.getpid(),  # which process answered, with --workers
        }
    )


#: /readyz answers within this even if the store does not (a frozen Redis).
READY_TIMEOUT = 2.0


async def readyz(request: Request) -> JSONResponse:
    """Readiness, for a load balancer: 503 while the store is unreachable or the process is draining."""
    engine = engine_of(request)
    if request.state.hub.closing.is_set():
        return _not_ready("draining", "draining", "the server is shutting down; send new requests elsewhere")
    try:
        with anyio.fail_after(READY_TIMEOUT):
            await engine.store.ping()
    except TimeoutError:
        return _not_ready("unavailable", "store_unavailable", f"the store did not answer within {READY_TIMEOUT:g} s")
    except StoreUnavailable as exc:
        return _not_ready("unavailable", exc.code, exc.message)
    return JSONResponse({"status": "ready", "store": engine.store.kind})


def _not_ready(status: str, code: str, message: str) -> JSONResponse:
    return JSONResponse({"status": status, "error": {"code": code, "message": message}}, status_code=503)


def record_process_gauges(engine: Engine, hub: Hub) -> None:
    outage = engine.store.outage
    subscribers = hub.subscribers_by_transport()
    record_gauges(engine.metrics, subscribers=subscribers, store_errors=outage.errors, outage_seconds=outage.seconds)


async def metrics(request: Request) -> Response:
    """Prometheus metrics: every live process's numbers added up (shared stores), and the store's queue.

    Needs the ``admin`` right. With the store down it still answers, with this process's numbers."""
    access.require(request, "admin")
    engine = engine_of(request)
    own: Metrics = request.state.metrics
    record_process_gauges(engine, request.state.hub)
    everyone, store_gauges = [own.counts], {}
    try:
        with anyio.fail_after(READY_TIMEOUT):
            shared = await engine.store.share_counts(own.process, own.counts.to_json(), PROCESS_TTL)
            state = await engine.store.queue_state()
        everyone = [Counts.from_json(text) for text in shared]
        store_gauges = {
            "jobcast_queue_depth": float(len(state.queued)),
            "jobcast_jobs_running": float(len(state.running)),
        }
    except (TimeoutError, StoreUnavailable):
        pass  # the outage itself shows in jobcast_store_errors and jobcast_store_outage_seconds
    return Response(render(Counts.total(everyone), store_gauges), media_type=CONTENT_TYPE)


async def openapi(request: Request) -> JSONResponse:
    """The OpenAPI document of this server: its root path, its agents, whether it needs tokens. Open."""
    schema = openapi_schema(
        package_version(),
        root_path=request.scope.get("root_path", ""),
        agents=list(engine_of(request).agents),
        token_required=not request.state.auth.open,
    )
    return JSONResponse(schema)


ROUTES = [
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/api/agents", agents, methods=["GET"]),
    Route("/api/projects", projects, methods=["GET"]),
    Route("/api/jobs", all_jobs, methods=["GET"]),
    Route("/api/jobs/{job_id}", job_by_id, methods=["GET"]),
    Route("/api/projects/{project_id}", project_status, methods=["GET"]),
    Route("/api/projects/{project_id}/jobs", history, methods=["GET"]),
    Route("/api/projects/{project_id}/agents/{agent}/job", agent_job, methods=["GET"]),
    Route("/api/projects/{project_id}/agents/{agent}/refresh", refresh, methods=["POST"]),
    Route("/api/projects/{project_id}/agents/{agent}/cancel", cancel, methods=["POST"]),
]
