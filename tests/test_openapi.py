"""The OpenAPI document at /openapi.json: valid OpenAPI 3.1, naming every route, and kept to by a live server.

The last tests fuzz real ``jobcast serve`` processes with schemathesis (its engine, the
one ``schemathesis run`` drives), over every operation of the document the server itself
serves: once with a secret and a token that opens every route, once open behind a proxy
that serves it under ``/jobcast``. Runs are derandomized with a fixed seed, so a failure
reproduces; each failure is reported with its curl command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
import schemathesis
import schemathesis.engine
from openapi_spec_validator import validate
from schemathesis.core.result import Ok
from schemathesis.engine import events
from schemathesis.engine.recorder import ScenarioRecorder
from schemathesis.schemas import BaseSchema
from starlette.routing import Mount, Route, WebSocketRoute

from jobcast.server.app import create_app
from jobcast.server.openapi import openapi_schema
from jobcast.server.settings import Settings
from tests.agents import OverloadedAgent
from tests.guarded import SECRET, Tokens
from tests.prefix_proxy import prefix_proxy
from tests.servers import jobcast_server
from tests.support import ALL_TEST_AGENTS, WAIT, status_is

#: A job that completes at once, and one that stays running for the whole run (so cancel has one to cancel);
#: a queue long enough that queue_full, a documented 503, never comes up: every 5xx is then a bug.
ARGS = ["--store", "memory://", "--max-queued", "10000", "--demo-seconds", "60"]
AGENTS = ["--agent", "tests.agents:QuickAgent", "--agent", "tests.agents:SleepyAgent"]
PREFIX = "/jobcast"
#: Generated cases per operation in the fuzzing phase (the examples and coverage phases add their own).
MAX_EXAMPLES = 10
SEED = 20261129
#: What every response must pass: no 5xx, and the status, content type, headers and body the document gives.
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
]
_CONVERTER = re.compile(r"{(\w+):\w+}")


def app_routes() -> dict[str, set[str]]:
    """Every HTTP path the app routes, in OpenAPI's spelling, with its methods (HEAD goes with GET)."""
    app = create_app(Settings(store="memory://", agents=ALL_TEST_AGENTS))
    found: dict[str, set[str]] = {}
    for route in app.routes:
        if isinstance(route, Route):
            methods = {method.lower() for method in route.methods or ()} - {"head"}
            found.setdefault(_CONVERTER.sub(r"{\1}", route.path), set()).update(methods)
        elif isinstance(route, Mount):
            found[f"{route.path}/{{file}}"] = {"get"}
        else:
            assert isinstance(route, WebSocketRoute), route  # OpenAPI cannot describe these
    return found


def test_the_document_is_valid_openapi_3_1() -> None:
    """The document validates as OpenAPI 3.1, with or without tokens, agents and a root path."""
    validate(openapi_schema("1.2.3"))
    validate(openapi_schema("1.2.3", root_path=PREFIX, agents=["financial"], token_required=False))


def test_every_route_of_the_app_is_in_the_document_with_its_methods() -> None:
    """The document's paths are exactly the app's HTTP routes, each with exactly its methods."""
    paths = openapi_schema("1.2.3")["paths"]
    documented = {path: set(operations) for path, operations in paths.items()}
    assert documented == app_routes()


def error_codes(node: object) -> set[str]:
    """Every error ``code`` the document enumerates, wherever it sits."""
    found: set[str] = set()
    if isinstance(node, dict):
        code = node.get("properties", {}).get("code") if isinstance(node.get("properties"), dict) else None
        if isinstance(code, dict):
            found.update(code.get("enum", []))
        for value in node.values():
            found |= error_codes(value)
    elif isinstance(node, list):
        for value in node:
            found |= error_codes(value)
    return found


def test_the_human_reference_names_every_route_and_error_code_of_the_document() -> None:
    """docs/api.md stays the human reference: each path and each error code in /openapi.json appears in it."""
    reference = (Path(__file__).parent.parent / "docs" / "api.md").read_text()
    document = openapi_schema("1.2.3")
    assert [path for path in document["paths"] if path not in reference] == []
    codes = error_codes(document)
    assert {"invalid_project_id", "store_unavailable", "draining"} <= codes  # the walk finds them
    assert sorted(code for code in codes if f"`{code}`" not in reference) == []


def test_the_document_is_pure() -> None:
    """Each call builds a fresh document: changing one leaves the next untouched."""
    first = openapi_schema("1.2.3")
    first["components"]["schemas"]["Job"]["properties"]["created_at"]["format"] = "changed"
    assert openapi_schema("1.2.3") == openapi_schema("1.2.3") != first


@pytest.mark.anyio
async def test_the_served_document_needs_no_token_and_names_the_agents(make_app: Callable[..., Any]) -> None:
    """/openapi.json is open on a server with a secret, which it says needs tokens; its agents are the examples."""
    async with make_app(secret=SECRET) as app:
        response = await app.http.get("/openapi.json")
        assert (await app.http.get("/api/agents")).status_code == 401
    assert response.status_code == 200
    document = response.json()
    assert document["servers"] == [{"url": "/", "description": "this server"}]
    assert document["security"] == [{"bearerAuth": []}]
    parameters = document["paths"]["/api/projects/{project_id}/agents/{agent}/job"]["get"]["parameters"]
    agent = next(parameter for parameter in parameters if parameter["name"] == "agent")
    assert "quick" in agent["schema"]["examples"]


def test_an_open_server_makes_the_token_optional() -> None:
    """Without a secret the document says so: no token is one of the ways in."""
    assert openapi_schema("1.2.3", token_required=False)["security"] == [{"bearerAuth": []}, {}]


@pytest.mark.anyio
async def test_the_old_status_of_a_retrying_job_is_processing(
    make_app: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job waiting for its next attempt is still active: processing_status says processing, as documented."""
    monkeypatch.setattr(OverloadedAgent, "retry_after", 30)  # it waits in retrying for the whole test
    async with make_app(agents={"overloaded": OverloadedAgent()}) as app:
        job = (await app.http.post("/api/projects/acme/agents/overloaded/refresh")).json()["job"]
        await app.wait_for(job["job_id"], status_is("retrying"))
        response = await app.http.get("/overloaded_agent/processing_status/acme")
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["job_status"]) == ("processing", "retrying")


# -- a live server keeps to its document ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LiveServer:
    """Where to load the document from, and the token schemathesis sends (None: an open server)."""

    document_url: str
    token: str | None


@contextlib.contextmanager
def secured(tmp_path: Path) -> Iterator[LiveServer]:
    """A server with a secret (from JOBCAST_SECRET), and a token for every project with every right (admin too)."""
    env = {"JOBCAST_SECRET": SECRET}
    with jobcast_server([*ARGS, *AGENTS], tmp_path / "server.log", env=env) as server:
        yield LiveServer(f"{server.url}/openapi.json", Tokens().mint(("*",), ("read", "run", "admin")))


@contextlib.contextmanager
def open_behind_a_prefix(tmp_path: Path) -> Iterator[LiveServer]:
    """An open server run with --root-path, reached only through a proxy that strips the prefix."""
    args = [*ARGS, "--root-path", PREFIX, *AGENTS]
    with (
        jobcast_server(args, tmp_path / "server.log") as server,
        anyio.from_thread.start_blocking_portal() as portal,  # the proxy's event loop, in a thread of its own
        portal.wrap_async_context_manager(prefix_proxy(PREFIX, server.port)) as proxy,
    ):
        yield LiveServer(f"{proxy.url}/openapi.json", None)


def fuzz_config(token: str | None) -> schemathesis.Config:
    """Few examples, a fixed seed, derandomized; only the checks above; an SSE stream read to its first event.

    Schemathesis reuses values from responses, an epoch among them: a long-poll with a
    cursor that resumes waits ``wait`` seconds (25 by default), so ``wait`` is pinned to 0
    (tests/test_push.py covers ``invalid_wait``).
    """
    config: dict[str, Any] = {
        "seed": SEED,
        "suppress-health-check": ["all"],
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "no-shrink": True},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"enabled": False, **{check: {"enabled": True} for check in CHECKS}},
        "parameters": {"query.wait": 0},
        "max-stream-events": 1,
        "request-timeout": WAIT,
    }
    if token is not None:
        config["auth"] = {"openapi": {"bearerAuth": {"bearer": token}}}
    return schemathesis.Config.from_dict(config)


@dataclasses.dataclass
class FuzzReport:
    """What a run found: each problem with its reproduction; the operations that got answers, and a 2xx."""

    problems: list[str] = dataclasses.field(default_factory=list)
    answered: set[str] = dataclasses.field(default_factory=set)
    succeeded: set[str] = dataclasses.field(default_factory=set)

    def record(self, event: events.EngineEvent) -> None:
        if isinstance(event, events.ScenarioFinished):
            self._scenario(event.recorder)
        elif isinstance(event, events.NonFatalError):
            self.problems.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            self.problems.append(f"schemathesis failed: {event.exception!r}")

    def _scenario(self, recorder: ScenarioRecorder) -> None:
        for case_id, interaction in recorder.interactions.items():
            if interaction.response is not None:
                label = recorder.cases[case_id].value.operation.label
                self.answered.add(label)
                if 200 <= interaction.response.status_code < 300:
                    self.succeeded.add(label)
        for checks in recorder.checks.values():
            for check in checks:
                if check.failure_info is not None:
                    failure = check.failure_info.failure
                    self.problems.append(f"{failure.title}: {failure.message}\n{check.failure_info.code_sample}")


def fuzz(schema: BaseSchema) -> FuzzReport:
    """``schemathesis run``, in-process: every operation through the examples, coverage and fuzzing phases."""
    report = FuzzReport()
    for event in schemathesis.engine.from_schema(schema).execute():
        report.record(event)
        if isinstance(event, events.EngineFinished):
            assert event.stop_reason == "completed", event.stop_reason
    return report


def operation_labels(schema: BaseSchema) -> set[str]:
    """Every operation of the document, like ``GET /healthz``; one schemathesis cannot read fails the test."""
    labels = set()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        labels.add(result.ok().label)
    return labels


@pytest.fixture(scope="module", params=[secured, open_behind_a_prefix], ids=["secured", "open-behind-a-prefix"])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Each kind of live server, for the whole module."""
    with request.param(tmp_path_factory.mktemp("openapi")) as server:
        yield server


def test_a_live_server_names_its_root_path_as_the_server(live: LiveServer) -> None:
    """A client behind the proxy's prefix is sent there: the document's server is the root path."""
    response = httpx.get(live.document_url, timeout=WAIT)  # no token, even on the secured server
    assert response.status_code == 200
    expected = PREFIX if live.token is None else "/"
    assert [server["url"] for server in response.json()["servers"]] == [expected]


def test_a_live_server_keeps_to_its_document(live: LiveServer) -> None:
    """Every operation of the document the server serves, fuzzed: no 5xx, only documented statuses,
    content types and headers, and every response body as documented."""
    schema = schemathesis.openapi.from_url(live.document_url, config=fuzz_config(live.token))
    report = fuzz(schema)
    assert not report.problems, "\n\n".join(report.problems)
    assert report.answered == report.succeeded == operation_labels(schema)
