"""GET /api/jobs: history across projects, newest first, a page at a time, on every store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Running
from tests.guarded import SECRET, Tokens
from tests.support import status_is

pytestmark = pytest.mark.anyio


async def run_to_the_end(app: Running, project: str, agent: str) -> dict[str, Any]:
    answer = await app.http.post(f"/api/projects/{project}/agents/{agent}/refresh")
    assert answer.status_code == 202, answer.text
    job = await app.wait_for(answer.json()["job"]["job_id"], status_is("completed", "failed"))
    return job.to_dict()


async def pages(app: Running, query: str, **headers: str) -> list[list[str]]:
    """Every page of ``query``, following ``next``: the job ids of each."""
    found, before = [], ""
    while True:
        answer = await app.http.get(f"/api/jobs?{query}{before}", headers=headers)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        found.append([job["job_id"] for job in body["jobs"]])
        if body["next"] is None:
            return found
        before = f"&before={body['next']}"


async def test_pages_are_newest_first_and_stay_put_while_new_jobs_arrive(
    make_app: Callable[..., Any], store_url: str
) -> None:
    async with make_app(store=store_url) as app:
        made = [await run_to_the_end(app, project, "quick") for project in ("acme", "beta", "gamma", "delta", "eps")]
        newest_first = [job["job_id"] for job in reversed(made)]
        first = await app.http.get("/api/jobs?limit=2")
        assert [job["job_id"] for job in first.json()["jobs"]] == newest_first[:2]
        late = await run_to_the_end(app, "acme", "failing")  # arrives between page 1 and page 2
        rest = await pages(app, f"limit=2&before={first.json()['next']}")
        assert rest == [newest_first[2:4], newest_first[4:]]
        assert (await pages(app, "limit=50"))[0][0] == late["job_id"]


async def test_filters_by_project_agent_and_status(make_app: Callable[..., Any], store_url: str) -> None:
    async with make_app(store=store_url) as app:
        failed = await run_to_the_end(app, "acme", "failing")
        acme = await run_to_the_end(app, "acme", "quick")
        beta = await run_to_the_end(app, "beta", "quick")
        assert await pages(app, "project=acme") == [[acme["job_id"], failed["job_id"]]]
        assert await pages(app, "agent=quick") == [[beta["job_id"], acme["job_id"]]]
        assert await pages(app, "status=failed") == [[failed["job_id"]]]
        assert await pages(app, "project=beta&status=failed") == [[]]
        whole = (await app.http.get("/api/jobs?status=failed")).json()["jobs"][0]
        assert whole == (await app.http.get(f"/api/jobs/{failed['job_id']}")).json()  # the same record


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("status=exploded", "invalid_status"),
        ("limit=0", "invalid_limit"),
        ("limit=ten", "invalid_limit"),
        ("before=not-a-cursor", "invalid_cursor"),
        ("before=WzEsMl0", "invalid_cursor"),  # [1, 2]: well-formed base64 JSON, not a cursor
        ("project=has%20space", "invalid_project_id"),
        ("started_by=" + "x" * 201, "invalid_started_by"),
    ],
)
async def test_bad_parameters_get_400_with_a_stable_code(make_app: Callable[..., Any], query: str, code: str) -> None:
    async with make_app() as app:
        answer = await app.http.get(f"/api/jobs?{query}")
        assert (answer.status_code, answer.json()["error"]["code"]) == (400, code)


async def test_an_unknown_agent_is_404(make_app: Callable[..., Any]) -> None:
    async with make_app() as app:
        answer = await app.http.get("/api/jobs?agent=nobody")
        assert (answer.status_code, answer.json()["error"]["code"]) == (404, "unknown_agent")


async def test_a_token_sees_only_the_projects_it_covers(make_app: Callable[..., Any]) -> None:
    async with make_app(secret=SECRET) as app:
        everything = {"authorization": f"Bearer {Tokens().mint(('*',))}"}
        for project in ("acme", "beta"):
            answer = await app.http.post(f"/api/projects/{project}/agents/quick/refresh", headers=everything)
            await app.wait_for(answer.json()["job"]["job_id"], status_is("completed"))
        acme_only = {"authorization": f"Bearer {Tokens().mint(('acme',))}"}
        listed = (await app.http.get("/api/jobs", headers=acme_only)).json()["jobs"]
        assert [job["project_id"] for job in listed] == ["acme"]
        refused = await app.http.get("/api/jobs?project=beta", headers=acme_only)
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "forbidden")
        anonymous = await app.http.get("/api/jobs")
        assert anonymous.status_code == 401
        assert len((await app.http.get("/api/jobs", headers=everything)).json()["jobs"]) == 2
