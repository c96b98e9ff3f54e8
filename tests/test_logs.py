"""--log-format json: one JSON object per line, every job line carrying its job id, tokens redacted.

Real ``jobcast serve`` processes, their log files read line by line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import jobcast_server
from tests.support import WAIT, eventually

AGENTS = ["--agent", "tests.agents:QuickAgent", "--agent", "tests.agents:FailingAgent",
          "--agent", "tests.agents:FlakyAgent"]  # fmt: skip
ARGS = ["--store", "memory://", "--log-level", "info", *AGENTS]
A_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"


def start(url: str, agent: str, project: str) -> str:
    answer = httpx.post(f"{url}/api/projects/{project}/agents/{agent}/refresh", timeout=WAIT)
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["job"]["job_id"]
    return job_id


def final_status(url: str, job_id: str) -> str:
    def ended() -> str | None:
        status: str = httpx.get(f"{url}/api/jobs/{job_id}", timeout=WAIT).json()["status"]
        return status if status in ("completed", "failed") else None

    return eventually(ended, what=f"job {job_id} ended")


def run_three_jobs(url: str) -> dict[str, str]:
    """A job that completes, one that fails, one that fails twice in a way worth retrying and then completes."""
    jobs = {"quick": start(url, "quick", "acme"), "failing": start(url, "failing", "acme"),
            "flaky": start(url, "flaky", "acme")}  # fmt: skip
    assert {agent: final_status(url, job_id) for agent, job_id in jobs.items()} == {
        "quick": "completed",
        "failing": "failed",
        "flaky": "completed",
    }
    # A client that puts a token in a URL by mistake: the access line must not keep it.
    httpx.get(f"{url}/api/projects/acme?token={A_TOKEN}", timeout=WAIT)
    return jobs


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_every_line_is_a_json_object_and_every_job_line_names_its_job(tmp_path: Path) -> None:
    with jobcast_server([*ARGS, "--log-format", "json"], tmp_path / "server.log") as server:
        jobs = run_three_jobs(server.url)
        eventually(lambda: "[redacted]" in server.log, what="the access line of the request with a token")
    lines = json_lines(server.log)  # raises on any line that is not JSON
    assert all({"level", "time", "logger", "message"} <= line.keys() for line in lines)
    assert all(line["time"].endswith("+00:00") for line in lines)
    assert A_TOKEN not in server.log
    about_jobs = [line for line in lines if line["message"].startswith("job ")]
    assert all(line.get("job_id") and line["job_id"] in line["message"] for line in about_jobs)

    def lines_of(agent: str) -> list[dict[str, Any]]:
        return [line for line in lines if line.get("job_id") == jobs[agent]]

    quick = lines_of("quick")
    assert [line["message"].split(":")[0] for line in quick] == [
        f"job {jobs['quick']} started",
        f"job {jobs['quick']} completed",
    ]
    assert all(line["project_id"] == "acme" and line["agent"] == "quick" and line["attempt"] == 1 for line in quick)
    failing = lines_of("failing")
    assert any(
        line["level"] == "error" and "ledger for acme is offline" in line.get("exception", "") for line in failing
    )
    assert any(line["message"].startswith(f"job {jobs['failing']} failed") for line in failing)
    flaky = lines_of("flaky")
    retries = [line for line in flaky if "retrying in" in line["message"]]
    assert [line["attempt"] for line in retries] == [1, 2]
    assert [line["attempt"] for line in flaky if " started:" in line["message"]] == [1, 2, 3]
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert access and all(line["client"].startswith("127.0.0.1") for line in access)


def test_text_lines_name_the_job_too(tmp_path: Path) -> None:
    with jobcast_server(ARGS, tmp_path / "server.log") as server:
        jobs = run_three_jobs(server.url)
    log = server.log
    assert A_TOKEN not in log
    for job_id in jobs.values():
        assert f"job {job_id} started" in log
    assert f"job {jobs['quick']} completed" in log
    assert f"job {jobs['failing']} failed" in log
    assert f"job {jobs['flaky']} attempt 1 failed (transient_error: provider overloaded); retrying in" in log
    with pytest.raises(json.JSONDecodeError):
        json_lines(log)
