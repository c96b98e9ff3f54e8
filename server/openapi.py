"""The OpenAPI 3.1 description of every HTTP route, as a plain dict; ``GET /openapi.json`` serves it.

Pure: :func:`openapi_schema` builds a fresh document from its arguments on every call
(the version, the server's root path, its agents, whether it needs tokens), so nothing
here is shared or mutated. docs/api.md and docs/protocol.md tell the same in words;
tests/test_openapi.py checks this document against the app's routes and a live server.

OpenAPI cannot describe a WebSocket: ``/ws/projects/{project_id}`` is named in the
``push`` tag's description and left to docs/protocol.md.
"""

from __future__ import annotations

import importlib.metadata
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import (
    AuthRequired,
    BodyTooLarge,
    Forbidden,
    InvalidToken,
    JobNotFound,
    NothingToCancel,
    OriginNotAllowed,
    QueueFull,
    RateLimited,
    StoreUnavailable,
    TokenExpired,
    TooManyConnections,
    UnknownAgent,
)
from .jobs import JobStatus
from .scheduling import IfActive, Priority, Waiting
from .validation import PROJECT_ID

Schema = dict[str, Any]
#: One error a route may answer: its HTTP status and its ``error.code``.
Refusal = tuple[int, str]

OPENAPI_VERSION = "3.1.0"
SECURITY_SCHEME = "bearerAuth"

#: Every route: a browser's foreign Origin is refused before any route runs; anything unexpected is a 500.
EVERY_ROUTE: tuple[Refusal, ...] = ((403, OriginNotAllowed.code), (500, "internal_error"))
#: A path with parameters: a value with a '/' (or ``%2F``, decoded first) names no route.
TEMPLATED: tuple[Refusal, ...] = ((404, "not_found"),)
TOKEN: tuple[Refusal, ...] = (
    (401, AuthRequired.code),
    (401, InvalidToken.code),
    (401, TokenExpired.code),
    (403, Forbidden.code),
)
PROJECT: tuple[Refusal, ...] = ((400, "invalid_project_id"),)
AGENT: tuple[Refusal, ...] = ((404, UnknownAgent.code),)
STORE: tuple[Refusal, ...] = ((503, StoreUnavailable.code),)
START: tuple[Refusal, ...] = ((429, RateLimited.code), (503, QueueFull.code))
STREAM: tuple[Refusal, ...] = ((429, TooManyConnections.code),)
REFRESH_BODY: tuple[Refusal, ...] = (
    (400, "invalid_json"),
    (400, "invalid_body"),
    (400, "unknown_field"),
    (400, "invalid_priority"),
    (400, "invalid_if_active"),
    (413, BodyTooLarge.code),
)

_STATUS_TEXT: Mapping[int, str] = types.MappingProxyType(
    {
        400: "Bad request: the path or a parameter is invalid",
        401: "No valid token (the server has a secret)",
        403: "Refused: the token does not allow it, or a foreign browser Origin",
        404: "Not found",
        409: "Conflict",
        413: "The request body is over 64 KiB",
        429: "Too many requests",
        500: "An internal error; the details are in the server log",
        503: "Unavailable for now; try again shortly",
    }
)


def package_version() -> str:
    """The installed jobcast's version, for ``info.version``."""
    try:
        return importlib.metadata.version("jobcast")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def openapi_schema(
    version: str, *, root_path: str = "", agents: Sequence[str] = (), token_required: bool = True
) -> Schema:
    """The whole document. ``agents`` become the examples of ``{agent}``; without ``token_required``
    (a server with no secret) the token is optional and ignored."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": _info(version),
        "servers": [{"url": root_path.rstrip("/") or "/", "description": "this server"}],
        "tags": _tags(),
        "security": [{SECURITY_SCHEME: []}] if token_required else [{SECURITY_SCHEME: []}, {}],
        "paths": {**_api_paths(agents), **_push_paths(), **_legacy_paths(agents), **_page_paths()},
        "components": {"schemas": _schemas(), "securitySchemes": _security_schemes()},
    }


def _info(version: str) -> Schema:
    return {
        "title": "jobcast",
        "version": version,
        "summary": "Run slow agent jobs behind a web app and push their progress live.",
        "description": (
            'Every JSON error has the shape `{"error": {"code": ..., "message": ...}}`; clients branch on '
            "`code`. Every GET route also answers HEAD. docs/api.md and docs/protocol.md describe the routes in "
            "words, with examples."
        ),
        "license": {"name": "MIT", "identifier": "MIT"},
    }


def _tags() -> list[Schema]:
    return [
        {"name": "jobs", "description": "Start, cancel and read jobs."},
        {
            "name": "push",
            "description": (
                "A project's events over Server-Sent Events and long-poll. The third transport, a WebSocket at "
                "`/ws/projects/{project_id}?epoch=&after=`, carries the same messages; OpenAPI cannot describe "
                "it (docs/protocol.md does)."
            ),
        },
        {"name": "health", "description": "Liveness and readiness, for load balancers, and this document; no token."},
        {"name": "legacy", "description": "The old polling app's routes, kept for its clients."},
        {"name": "pages", "description": "The dashboard and the browser client; no token."},
    ]


def _security_schemes() -> Schema:
    return {
        SECURITY_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": (
                "`Authorization: Bearer <token>`, from `jobcast token` or any JWT library (docs/security.md). "
                "Needed on every route but /healthz, /readyz, /openapi.json and the pages when the server has a "
                "secret or a public key; without one the server runs open and ignores it."
            ),
        }
    }


# -- building blocks ---------------------------------------------------------------------------


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def or_null(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def closed(properties: Schema, *, optional: Iterable[str] = ()) -> Schema:
    """An object with exactly these properties, each required unless named in ``optional``."""
    skip = set(optional)
    required = [name for name in properties if name not in skip]
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def const(value: Any) -> Schema:
    return {"const": value}


def enum(values: Iterable[str]) -> Schema:
    return {"type": "string", "enum": list(values)}


def string() -> Schema:
    return {"type": "string"}


def timestamp(*, nullable: bool = False) -> Schema:
    """UTC ISO 8601 with milliseconds, like ``2026-11-29T06:58:56.131Z``."""
    return {"type": ["string", "null"] if nullable else "string", "format": "date-time"}


def count() -> Schema:
    return {"type": "integer", "minimum": 0}


def seconds() -> Schema:
    """Seconds, or null when unknown."""
    return {"type": ["number", "null"], "minimum": 0}


def json_response(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error_responses(refusals: Iterable[Refusal]) -> dict[str, Schema]:
    """One response per status, its ``error.code`` limited to the codes the route can answer with it."""
    by_status: dict[int, set[str]] = {}
    for status, code in refusals:
        by_status.setdefault(status, set()).add(code)
    return {str(status): _error_response(status, codes) for status, codes in sorted(by_status.items())}


def _error_response(status: int, codes: set[str]) -> Schema:
    schema = {"allOf": [ref("Error")], "properties": {"error": {"properties": {"code": enum(sorted(codes))}}}}
    response = json_response(_STATUS_TEXT[status], schema)
    headers = _error_headers(status, codes)
    return {**response, "headers": headers} if headers else response


def _error_headers(status: int, codes: set[str]) -> Schema:
    if status == 401:
        header = '`Bearer realm="jobcast"`, with `error="invalid_token"` unless the token was missing'
        return {"WWW-Authenticate": {"description": header, "required": True, "schema": string()}}
    if RateLimited.code in codes:
        wait = {"description": "seconds to wait (rate_limited)", "schema": {"type": "integer", "minimum": 1}}
        return {"Retry-After": {**wait, "required": codes == {RateLimited.code}}}
    return {}


def path_parameter(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def query_parameter(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def project_id_parameter() -> Schema:
    pattern = {"type": "string", "pattern": f"^{PROJECT_ID.pattern}$"}
    return path_parameter("project_id", pattern, "1 to 64 of `A-Za-z0-9_.-`, starting with a letter or digit")


def agent_parameter(agents: Sequence[str]) -> Schema:
    schema: Schema = {"type": "string", "minLength": 1}
    if agents:
        schema["examples"] = list(agents)
    return path_parameter("agent", schema, "a configured agent's name (GET /api/agents lists them)")


def operation(
    operation_id: str,
    summary: str,
    tag: str,
    responses: dict[str, Schema],
    refusals: Iterable[Refusal] = (),
    *,
    parameters: Sequence[Schema] = (),
    open_route: bool = False,
    **extra: Any,
) -> Schema:
    """One operation. Its refusals join those of every route; ``open_route`` needs no token."""
    found = {"operationId": operation_id, "summary": summary, "tags": [tag], **extra}
    if parameters:
        found["parameters"] = list(parameters)
    if open_route:
        found["security"] = []
    found["responses"] = {**responses, **error_responses([*EVERY_ROUTE, *refusals])}
    return found


# -- the JSON API --------------------------------------------------------------------------------


def _api_paths(agents: Sequence[str]) -> Schema:
    return {
        "/healthz": {"get": _healthz()},
        "/readyz": {"get": _readyz()},
        "/metrics": {"get": _metrics()},
        "/openapi.json": {"get": _openapi_json()},
        "/api/agents": {"get": _list_agents()},
        "/api/projects": {"get": _list_projects()},
        "/api/jobs": {"get": _all_jobs(agents)},
        "/api/jobs/{job_id}": {"get": _job_by_id()},
        "/api/projects/{project_id}": {"get": _project_status()},
        "/api/projects/{project_id}/jobs": {"get": _history(agents)},
        "/api/projects/{project_id}/agents/{agent}/job": {"get": _agent_job(agents)},
        "/api/projects/{project_id}/agents/{agent}/refresh": {"post": _refresh(agents)},
        "/api/projects/{project_id}/agents/{agent}/cancel": {"post": _cancel(agents)},
    }


def _healthz() -> Schema:
    ok = {"200": json_response("Alive: the process serves HTTP, whatever its store's state", ref("Health"))}
    return operation("healthz", "Liveness and load of the process that answered", "health", ok, open_route=True)


def _readyz() -> Schema:
    responses = {
        "200": json_response("Ready: the store answered", ref("Ready")),
        "503": json_response("Not ready: the store is unreachable, or the process is shutting down", ref("NotReady")),
    }
    return operation("readyz", "Readiness: can this process do its work now?", "health", responses, open_route=True)


def _metrics() -> Schema:
    text = {"text/plain": {"schema": {"type": "string"}}}
    ok = {"200": {"description": "Prometheus metrics, every process's added up (docs/operations.md)", "content": text}}
    summary = "Prometheus metrics; needs the admin right when the server has a secret"
    return operation("metrics", summary, "health", ok, TOKEN)


def _openapi_json() -> Schema:
    ok = {"200": json_response("This document", {"type": "object"})}
    return operation("openapi", "This OpenAPI document", "health", ok, open_route=True)


def _list_agents() -> Schema:
    ok = {"200": json_response("The configured agents, in configuration order", ref("AgentList"))}
    return operation("listAgents", "The configured agents and their job timeouts", "jobs", ok, TOKEN)


def _list_projects() -> Schema:
    ok = {
        "200": json_response(
            "Project ids, most recently changed first; only those the token covers", ref("ProjectList")
        )
    }
    return operation("listProjects", "Every project that has a job", "jobs", ok, [*TOKEN, *STORE])


def _job_by_id() -> Schema:
    ok = {"200": json_response("The job record", ref("Job"))}
    job_id = path_parameter("job_id", {"type": "string", "minLength": 1}, "the job's id: 32 hex characters")
    refusals = [*TOKEN, *TEMPLATED, (404, JobNotFound.code), *STORE]
    summary = "One job by id (a job outside the token's projects is answered as one that does not exist)"
    return operation("getJob", summary, "jobs", ok, refusals, parameters=[job_id])


def _project_status() -> Schema:
    ok = {"200": json_response("Every configured agent's current or last job and last result", ref("ProjectStatus"))}
    refusals = [*TOKEN, *TEMPLATED, *PROJECT, *STORE]
    return operation("getProject", "A project's state", "jobs", ok, refusals, parameters=[project_id_parameter()])


def _history(agents: Sequence[str]) -> Schema:
    agent = {"type": "string", **({"examples": list(agents)} if agents else {})}
    parameters = [
        project_id_parameter(),
        query_parameter("agent", agent, "only this agent's jobs; empty or absent means every agent"),
        query_parameter("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "at most this many"),
    ]
    ok = {"200": json_response("The jobs, newest first", ref("JobHistory"))}
    refusals = [*TOKEN, *TEMPLATED, *PROJECT, (400, "invalid_limit"), *AGENT, *STORE]
    return operation("listJobs", "A project's job history", "jobs", ok, refusals, parameters=parameters)


def _all_jobs(agents: Sequence[str]) -> Schema:
    agent = {"type": "string", **({"examples": list(agents)} if agents else {})}
    parameters = [
        query_parameter("project", {"type": "string"}, "only this project's jobs; absent means every project"),
        query_parameter("agent", agent, "only this agent's jobs"),
        query_parameter("status", ref("JobStatus"), "only jobs in this status"),
        query_parameter("started_by", {"type": "string", "maxLength": 200}, "only jobs this user started"),
        query_parameter("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "at most this many"),
        query_parameter("before", {"type": "string"}, "the `next` of the previous page, unchanged"),
    ]
    ok = {"200": json_response("The jobs, newest first, and the cursor of the next page", ref("JobPage"))}
    bad = [(400, code) for code in ("invalid_status", "invalid_started_by", "invalid_limit", "invalid_cursor")]
    refusals = [*TOKEN, *PROJECT, *bad, *AGENT, *STORE]
    summary = "Job history across the projects the token covers, a page at a time"
    return operation("listAllJobs", summary, "jobs", ok, refusals, parameters=parameters)


def _agent_job(agents: Sequence[str]) -> Schema:
    ok = {"200": json_response("The pair's queued or running job, else its latest", ref("Job"))}
    refusals = [*TOKEN, *TEMPLATED, *PROJECT, *AGENT, (404, JobNotFound.code), *STORE]
    parameters = [project_id_parameter(), agent_parameter(agents)]
    return operation("getAgentJob", "A (project, agent) pair's job", "jobs", ok, refusals, parameters=parameters)


def _refresh(agents: Sequence[str]) -> Schema:
    responses = {
        "200": json_response("A job was already queued or running: it is returned (deduplicated)", ref("Started")),
        "202": json_response("A new job was queued", ref("Started")),
    }
    body = {
        "required": False,
        "description": "How to start; no body means the defaults (at most 64 KiB)",
        "content": {"application/json": {"schema": ref("RefreshOptions")}},
    }
    refusals = [*TOKEN, *TEMPLATED, *PROJECT, *AGENT, *REFRESH_BODY, *START, *STORE]
    parameters = [project_id_parameter(), agent_parameter(agents)]
    summary = "Start a job for the agent on the project, or join the active one (needs the run right)"
    return operation("refresh", summary, "jobs", responses, refusals, parameters=parameters, requestBody=body)


def _cancel(agents: Sequence[str]) -> Schema:
    responses = {
        "200": json_response("Already cancelled, or its cancel is pending: the same job", ref("Cancelled")),
        "202": json_response("Cancelled (a queued job) or asked to stop (a running one)", ref("Cancelled")),
    }
    refusals = [*TOKEN, *TEMPLATED, *PROJECT, *AGENT, (409, NothingToCancel.code), *STORE]
    parameters = [project_id_parameter(), agent_parameter(agents)]
    summary = "Cancel the pair's queued or running job (needs the run right)"
    return operation("cancel", summary, "jobs", responses, refusals, parameters=parameters)


# -- push: Server-Sent Events and long-poll ------------------------------------------------------


def _cursor_parameters() -> list[Schema]:
    return [
        query_parameter("epoch", {"type": "string", "maxLength": 64}, "the cursor's epoch; with `after`"),
        query_parameter("after", count(), "the seq of the last transition applied; a bad cursor gets a snapshot"),
    ]


def _push_paths() -> Schema:
    return {
        "/api/projects/{project_id}/events/stream": {"get": _event_stream()},
        "/api/projects/{project_id}/events": {"get": _poll_events()},
    }


def _event_stream() -> Schema:
    last_event_id = {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "schema": string(),
        "description": "`epoch:seq`, as EventSource resends it; it wins over `epoch` and `after`",
    }
    stream = {
        "description": "An endless `text/event-stream`: `retry: 2000`, the opening messages, then live ones",
        "content": {"text/event-stream": {"schema": ref("ServerSentEvent")}},
    }
    refusals = [*TOKEN, *TEMPLATED, *PROJECT, *STREAM, *STORE]  # later store failures are sent as error events
    parameters = [project_id_parameter(), *_cursor_parameters(), last_event_id]
    summary = "Follow a project's events over Server-Sent Events"
    return operation("streamEvents", summary, "push", {"200": stream}, refusals, parameters=parameters)


def _poll_events() -> Schema:
    wait = {"type": "integer", "minimum": 0, "maximum": 30, "default": 25}
    output = {
        "type": "string",
        "pattern": r"^([A-Za-z0-9]{1,64}\.[0-9]{1,6}\.[0-9]{1,9})?(,[A-Za-z0-9]{1,64}\.[0-9]{1,6}\.[0-9]{1,9})*$",
    }
    parameters = [
        project_id_parameter(),
        *_cursor_parameters(),
        query_parameter("wait", wait, "seconds to wait for news when there is none yet"),
        query_parameter(
            "output", output, "`JOB.ATTEMPT.LENGTH,...`: how much of each running job's output the client has"
        ),
        query_parameter(
            "client",
            {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
            "the poller's own id, so presence counts it once (else its address and user agent)",
        ),
    ]
    ok = {"200": json_response("What happened after the cursor, or a snapshot", ref("PollReply"))}
    refusals = [
        *TOKEN,
        *TEMPLATED,
        *PROJECT,
        (400, "invalid_wait"),
        (400, "invalid_output"),
        (400, "invalid_client"),
        *STREAM,
        *STORE,
    ]
    summary = "Long-poll a project's events"
    return operation("pollEvents", summary, "push", ok, refusals, parameters=parameters)


# -- the old app's routes ------------------------------------------------------------------------


def _legacy_paths(agents: Sequence[str]) -> Schema:
    return {
        "/{agent}_agent/status/{project_id}": {
            "get": _legacy_start(agents, "legacyStartGet"),
            "post": _legacy_start(agents, "legacyStart"),
        },
        "/{agent}_agent/processing_status/{project_id}": {"get": _legacy_processing_status(agents)},
        "/{agent}_agent/quick_status/{project_id}": {"get": _legacy_quick_status(agents)},
    }


def _legacy_parameters(agents: Sequence[str]) -> list[Schema]:
    return [agent_parameter(agents), project_id_parameter()]


def _legacy_start(agents: Sequence[str], operation_id: str) -> Schema:
    ok = {"200": json_response("Started, or joined the active job", ref("LegacyStart"))}
    refusals = [*TOKEN, *TEMPLATED, *PROJECT, *AGENT, *START, *STORE]
    summary = "Start a job or join the active one, like refresh (needs the run right)"
    return operation(operation_id, summary, "legacy", ok, refusals, parameters=_legacy_parameters(agents))


def _legacy_processing_status(agents: Sequence[str]) -> Schema:
    ok = {"200": json_response("The pair's current or latest job, in the old vocabulary", ref("LegacyStatus"))}
    refusals = [*TOKEN, *TEMPLATED, *PROJECT, *AGENT, *STORE]
    parameters = _legacy_parameters(agents)
    summary = "The pair's job in the old four states"
    return operation("legacyProcessingStatus", summary, "legacy", ok, refusals, parameters=parameters)


def _legacy_quick_status(agents: Sequence[str]) -> Schema:
    ok = {"200": json_response("The last completed result, and whether a job is active", ref("LegacyQuickStatus"))}
    refusals = [*TOKEN, *TEMPLATED, *PROJECT, *AGENT, *STORE]
    parameters = _legacy_parameters(agents)
    summary = "The last result, without starting anything"
    return operation("legacyQuickStatus", summary, "legacy", ok, refusals, parameters=parameters)


# -- pages ---------------------------------------------------------------------------------------


def _file(operation_id: str, summary: str, *media_types: str, refusals: Iterable[Refusal] = (), **extra: Any) -> Schema:
    content = {media_type: {"schema": string()} for media_type in media_types}
    ok = {"200": {"description": summary, "content": content}}
    return operation(operation_id, summary, "pages", ok, refusals, open_route=True, **extra)


def _page_paths() -> Schema:
    static = path_parameter(
        "file",
        {"type": "string", "minLength": 1, "examples": ["app.css", "js/state.js"]},
        "a file under web/static, like app.css or js/state.js",
    )
    return {
        "/": {"get": _file("home", "The dashboard's home page", "text/html")},
        "/projects/{project_id}": {
            "get": _file(
                "projectPage",
                "The dashboard's page of one project",
                "text/html",
                refusals=[*TEMPLATED, *PROJECT],
                parameters=[project_id_parameter()],
            )
        },
        "/jobs": {"get": _file("jobsPage", "The dashboard's list of jobs across projects", "text/html")},
        "/favicon.ico": {"get": _file("favicon", "The icon (an SVG)", "image/svg+xml")},
        "/jobcast.js": {"get": _file("browserClient", "The browser client, an ES module", "text/javascript")},
        "/jobcast.d.ts": {"get": _file("browserClientTypes", "The browser client's TypeScript types", "text/plain")},
        "/static/{file}": {
            "get": _file(
                "staticFile",
                "The dashboard's stylesheet and modules",
                "text/css",
                "text/javascript",
                "application/javascript",
                refusals=TEMPLATED,
                parameters=[static],
            )
        },
    }


# -- components ----------------------------------------------------------------------------------


def _schemas() -> Schema:
    return {
        **_error_schemas(),
        **_job_schemas(),
        **_api_schemas(),
        **_message_schemas(),
        **_legacy_schemas(),
    }


def _error_schemas() -> Schema:
    detail = closed({"code": string(), "message": string()})
    return {
        "ErrorDetail": {**detail, "description": "`code` is stable, for programs; `message` is for people"},
        "Error": closed({"error": ref("ErrorDetail")}),
    }


def _job_schemas() -> Schema:
    return {
        "JobStatus": enum(status.value for status in JobStatus),
        "Priority": enum(priority.value for priority in Priority),
        "Progress": closed(
            {
                "percent": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
                "message": {"type": ["string", "null"]},
            }
        ),
        "JobError": closed({"code": string(), "message": string()}),
        "QueuePlace": closed(
            {
                "position": {"type": "integer", "minimum": 1},
                "waiting_for": enum(w.value for w in Waiting),
                "detail": string(),
            }
        ),
        "Attempt": closed(
            {
                "attempt": {"type": "integer", "minimum": 1},
                "started_at": timestamp(nullable=True),
                "finished_at": timestamp(nullable=True),
                "status": ref("JobStatus"),
                "error": or_null(ref("JobError")),
            }
        ),
        "Job": _job(),
    }


def _job() -> Schema:
    job = closed(
        {
            "job_id": string(),
            "project_id": string(),
            "agent": string(),
            "status": ref("JobStatus"),
            "created_at": timestamp(),
            "updated_at": timestamp(),
            "started_at": timestamp(nullable=True),
            "finished_at": timestamp(nullable=True),
            "elapsed_s": seconds(),
            "progress": ref("Progress"),
            "cancel_requested": {"type": "boolean"},
            "result": {"type": ["object", "null"], "description": "the agent's result, once completed"},
            "error": or_null(ref("JobError")),
            "priority": ref("Priority"),
            "started_by": {"type": ["string", "null"]},
            "after": {"type": ["string", "null"], "description": "the job a follow-up waits for"},
            "runner": or_null(closed({"host": string(), "pid": {"type": "integer"}})),
            "queue": or_null(ref("QueuePlace")),
            "attempt": {"type": "integer", "minimum": 1},
            "max_attempts": {"type": "integer", "minimum": 1},
            "retry_at": timestamp(nullable=True),
            "attempts": {"type": "array", "items": ref("Attempt")},
            "expected_s": seconds(),
            "eta_s": seconds(),
            "overdue": {"type": "boolean"},
            "output": {"type": ["string", "null"]},
            "output_truncated": {"type": "boolean"},
        }
    )
    return {**job, "description": "One run of one agent for one project (docs/api.md, the job record)"}


def _api_schemas() -> Schema:
    return {
        "AgentState": closed(
            {
                "job": or_null(ref("Job")),
                "last_result": {"type": ["object", "null"]},
                "last_result_at": timestamp(nullable=True),
            }
        ),
        "ProjectStatus": closed(
            {
                "project_id": string(),
                "epoch": string(),
                "seq": count(),
                "agents": {"type": "object", "additionalProperties": ref("AgentState")},
                "watching": count(),
            }
        ),
        "JobHistory": closed({"project_id": string(), "jobs": {"type": "array", "items": ref("Job")}}),
        "JobPage": closed(
            {"jobs": {"type": "array", "items": ref("Job")}, "next": {"type": ["string", "null"]}},
        ),
        "ProjectList": closed({"projects": {"type": "array", "items": string()}}),
        "AgentList": closed(
            {"agents": {"type": "array", "items": closed({"name": string(), "timeout_s": {"type": "number"}})}}
        ),
        "RefreshOptions": closed(
            {"priority": ref("Priority"), "if_active": enum(mode.value for mode in IfActive)},
            optional=("priority", "if_active"),
        ),
        "Started": closed({"job": ref("Job"), "deduplicated": {"type": "boolean"}}),
        "Cancelled": closed({"job": ref("Job")}),
        "Health": _health(),
        "Ready": closed({"status": const("ready"), "store": ref("StoreKind")}),
        "NotReady": closed(
            {
                "status": enum(["unavailable", "draining"]),
                "error": {
                    "allOf": [ref("ErrorDetail")],
                    "properties": {"code": enum([StoreUnavailable.code, "draining"])},
                },
            }
        ),
        "StoreKind": enum(["memory", "sqlite", "redis"]),
    }


def _health() -> Schema:
    return closed(
        {
            "status": const("ok"),
            "store": ref("StoreKind"),
            "epoch": string(),
            "threads": count(),
            "busy_threads": count(),
            "subscribers": count(),
            "waiting_polls": count(),
            "pid": {"type": "integer"},
        }
    )


def _message_schemas() -> Schema:
    """The push messages (docs/protocol.md), as a long-poll reply holds them."""
    return {
        "JobMessage": closed(
            {
                "type": const("job"),
                "epoch": string(),
                "seq": count(),
                "project_id": string(),
                "agent": string(),
                "job": ref("Job"),
            }
        ),
        "ProgressMessage": closed(
            {
                "type": const("progress"),
                "project_id": string(),
                "agent": string(),
                "job_id": string(),
                "elapsed_s": {"type": "number", "minimum": 0},
                "percent": {"type": ["number", "null"]},
                "message": {"type": ["string", "null"]},
                "seq": count(),
                "expected_s": seconds(),
                "eta_s": seconds(),
                "overdue": {"type": "boolean"},
            }
        ),
        "QueueMessage": closed(
            {
                "type": const("queue"),
                "project_id": string(),
                "agent": string(),
                "job_id": string(),
                "position": {"type": "integer", "minimum": 1},
                "waiting_for": enum(w.value for w in Waiting),
                "detail": string(),
            }
        ),
        "OutputMessage": closed(
            {
                "type": const("output"),
                "project_id": string(),
                "agent": string(),
                "job_id": string(),
                "attempt": {"type": "integer", "minimum": 1},
                "offset": count(),
                "text": string(),
            }
        ),
        "PollReply": {"oneOf": [_poll_resumed(), _poll_snapshot()]},
        "ServerSentEvent": _server_sent_event(),
    }


def _poll_common() -> Schema:
    return {
        "epoch": string(),
        "seq": count(),
        "progress": {"type": "array", "items": ref("ProgressMessage")},
        "queue": {"type": "array", "items": ref("QueueMessage")},
        "output": {"type": "array", "items": ref("OutputMessage")},
        "watching": count(),
    }


def _poll_resumed() -> Schema:
    resumed = {"recovered": const(True), "events": {"type": "array", "items": ref("JobMessage")}}
    return {**closed({**_poll_common(), **resumed}), "title": "the cursor resumed: the transitions after it"}


def _poll_snapshot() -> Schema:
    snapshot = closed(
        {
            "project_id": string(),
            "agents": {"type": "object", "additionalProperties": ref("AgentState")},
            "server_time": timestamp(),
        }
    )
    fields = {
        "recovered": const(False),
        "reason": string(),
        "snapshot": snapshot,
        "events": {"type": "array", "maxItems": 0},
    }
    return {**closed({**_poll_common(), **fields}), "title": "no cursor, or one that cannot resume: a snapshot"}


def _server_sent_event() -> Schema:
    """One event of the stream, as an SSE parser reads it; ``data`` is one message's JSON."""
    kinds = ["snapshot", "welcome", "job", "progress", "output", "queue", "error"]
    event = {
        "event": enum(kinds),
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string", "description": "`epoch:seq`, on snapshots and transitions"},
        "retry": {"type": "integer"},
    }
    return closed(event, optional=("id", "retry"))


def _legacy_schemas() -> Schema:
    return {
        "LegacyStart": closed(
            {
                "processing": const(True),
                "job_id": string(),
                "status": const("processing"),
                "deduplicated": {"type": "boolean"},
                "message": enum(["processing started", "already processing"]),
            }
        ),
        "LegacyStatus": {"oneOf": [_legacy_not_found(), *_legacy_job_states()]},
        "LegacyQuickStatus": closed(
            {
                "status": enum(["ok", "no_data"]),
                "project_id": string(),
                "agent": string(),
                "data": {"type": ["object", "null"]},
                "last_updated": timestamp(nullable=True),
                "processing": {"type": "boolean"},
                "job_id": {"type": ["string", "null"]},
            }
        ),
    }


def _legacy_not_found() -> Schema:
    return closed({"status": const("not_found"), "job_id": {"type": "null"}, "agent": string(), "project_id": string()})


def _legacy_job_states() -> list[Schema]:
    """``processing``, ``completed`` and ``failed``: the job's fields, then each state's own."""
    common = {
        "job_id": string(),
        "agent": string(),
        "project_id": string(),
        "started_at": timestamp(nullable=True),
        "elapsed_s": seconds(),
        "progress": ref("Progress"),
    }
    processing = {"status": const("processing"), "job_status": enum(["queued", "running", "retrying"])}
    completed = {
        "status": const("completed"),
        "job_status": const("completed"),
        "completed_at": timestamp(nullable=True),
        "result": {"type": ["object", "null"]},
    }
    failed = {
        "status": const("failed"),
        "job_status": enum(["failed", "cancelled", "timed_out"]),
        "failed_at": timestamp(nullable=True),
        "error": string(),
        "error_code": {"type": ["string", "null"]},
    }
    return [closed({**common, **state}) for state in (processing, completed, failed)]
