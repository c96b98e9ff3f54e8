"""The JSON API under /api, and /healthz."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import validation
from .engine import Engine
from .errors import JobNotFound
from .views import agents_view, project_view


def engine_of(request: Request) -> Engine:
    engine: Engine = request.state.engine
    return engine


def resolve_target(request: Request) -> tuple[Engine, str, str]:
    """The engine, and the project id and agent name of the path, both checked."""
    engine = engine_of(request)
    project_id = validation.project_id(request.path_params["project_id"])
    agent = request.path_params["agent"]
    engine.agent(agent)
    return engine, project_id, agent


async def refresh(request: Request) -> JSONResponse:
    engine, project_id, agent = resolve_target(request)
    job, deduplicated = await engine.start(project_id, agent)
    return JSONResponse({"job": job.to_dict(), "deduplicated": deduplicated}, status_code=200 if deduplicated else 202)


async def cancel(request: Request) -> JSONResponse:
    engine, project_id, agent = resolve_target(request)
    job = await engine.cancel(project_id, agent)
    return JSONResponse({"job": job.to_dict()}, status_code=202)


async def project_status(request: Request) -> JSONResponse:
    engine = engine_of(request)
    project_id = validation.project_id(request.path_params["project_id"])
    return JSONResponse(await project_view(engine, project_id))


async def agent_job(request: Request) -> JSONResponse:
    engine, project_id, agent = resolve_target(request)
    job = await engine.store.latest_job(project_id, agent)
    if job is None:
        raise JobNotFound(f"project {project_id!r} has no {agent!r} job yet")
    return JSONResponse(job.to_dict())


async def job_by_id(request: Request) -> JSONResponse:
    job_id = request.path_params["job_id"]
    job = await engine_of(request).store.get_job(job_id)
    if job is None:
        raise JobNotFound(f"no job with id {job_id[:80]!r}")
    return JSONResponse(job.to_dict())


async def history(request: Request) -> JSONResponse:
    engine = engine_of(request)
    project_id = validation.project_id(request.path_params["project_id"])
    agent = request.query_params.get("agent") or None
    if agent is not None:
        engine.agent(agent)
    limit = validation.bounded_int("limit", request.query_params.get("limit"), default=50, low=1, high=500)
    jobs = await engine.store.list_jobs(project_id, agent, limit)
    return JSONResponse({"project_id": project_id, "jobs": [job.to_dict() for job in jobs]})


async def projects(request: Request) -> JSONResponse:
    return JSONResponse({"projects": await engine_of(request).store.project_ids()})


async def agents(request: Request) -> JSONResponse:
    return JSONResponse({"agents": agents_view(engine_of(request))})


async def healthz(request: Request) -> JSONResponse:
    engine = engine_of(request)
    return JSONResponse(
        {
            "status": "ok",
            "store": engine.store.kind,
            "epoch": engine.store.epoch,
            "threads": engine.config.threads,
            "busy_threads": engine.busy_threads,
            "subscribers": request.state.hub.subscriber_count,
        }
    )


ROUTES = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/api/agents", agents, methods=["GET"]),
    Route("/api/projects", projects, methods=["GET"]),
    Route("/api/jobs/{job_id}", job_by_id, methods=["GET"]),
    Route("/api/projects/{project_id}", project_status, methods=["GET"]),
    Route("/api/projects/{project_id}/jobs", history, methods=["GET"]),
    Route("/api/projects/{project_id}/agents/{agent}/job", agent_job, methods=["GET"]),
    Route("/api/projects/{project_id}/agents/{agent}/refresh", refresh, methods=["POST"]),
    Route("/api/projects/{project_id}/agents/{agent}/cancel", cancel, methods=["POST"]),
]
