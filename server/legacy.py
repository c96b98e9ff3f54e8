"""The old app's polling routes, unchanged for existing clients.

``/{agent}_agent/status/{id}`` starts a job (the ``run`` right), ``processing_status``
reports it in the old four-state vocabulary, and ``quick_status`` reads the latest
data without work (both ``read``). Tokens are checked as on the API.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .api import resolve_target, start_job
from .jobs import Job, JobStatus, isoformat

_LEGACY_STATUS = {
    JobStatus.QUEUED: "processing",
    JobStatus.RUNNING: "processing",
    JobStatus.RETRYING: "processing",
    JobStatus.COMPLETED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "failed",
    JobStatus.TIMED_OUT: "failed",
}


async def start(request: Request) -> JSONResponse:
    job, deduplicated = await start_job(request)
    message = "already processing" if deduplicated else "processing started"
    return JSONResponse(
        {
            "processing": True,
            "job_id": job.job_id,
            "status": "processing",
            "deduplicated": deduplicated,
            "message": message,
        }
    )


async def processing_status(request: Request) -> JSONResponse:
    target = resolve_target(request, "read")
    job = await target.engine.store.latest_job(target.project_id, target.agent)
    if job is None:
        return JSONResponse(
            {"status": "not_found", "job_id": None, "agent": target.agent, "project_id": target.project_id}
        )
    return JSONResponse(legacy_job(job))


def legacy_job(job: Job) -> dict[str, Any]:
    status = _LEGACY_STATUS[job.status]
    body: dict[str, Any] = {
        "status": status,
        "job_id": job.job_id,
        "agent": job.agent,
        "project_id": job.project_id,
        # The old app's jobs started when accepted; one that never ran has no start.
        "started_at": isoformat(job.started_at or (job.created_at if job.status.is_active else None)),
        "elapsed_s": job.elapsed_s(),
        "progress": job.progress.to_dict(),
        "job_status": job.status.value,
    }
    if status == "completed":
        body["completed_at"] = isoformat(job.finished_at)
        body["result"] = job.result
    elif status == "failed":
        body["failed_at"] = isoformat(job.finished_at)
        body["error"] = job.error.message if job.error else "failed"
        body["error_code"] = job.error.code if job.error else None
    return body


async def quick_status(request: Request) -> JSONResponse:
    target = resolve_target(request, "read")
    store = target.engine.store
    results = await store.last_results(target.project_id)
    job = await store.latest_job(target.project_id, target.agent)
    last = results.get(target.agent)
    return JSONResponse(
        {
            "status": "ok" if last else "no_data",
            "project_id": target.project_id,
            "agent": target.agent,
            "data": last.result if last else None,
            "last_updated": isoformat(last.at) if last else None,
            "processing": bool(job and job.status.is_active),
            "job_id": job.job_id if job else None,
        }
    )


ROUTES = [
    Route("/{agent}_agent/status/{project_id}", start, methods=["GET", "POST"]),
    Route("/{agent}_agent/processing_status/{project_id}", processing_status, methods=["GET"]),
    Route("/{agent}_agent/quick_status/{project_id}", quick_status, methods=["GET"]),
]
