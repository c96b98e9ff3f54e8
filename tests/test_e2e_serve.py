"""End to end against real ``jobcast serve`` processes: a user's HTTP client, a crash, a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from agents.builtin import financial_figures
from tests.conftest import WAIT
from tests.servers import free_port, jobcast_command, jobcast_server

AGENTS = ["--agent", "agents.builtin:FinancialAgent", "--agent", "tests.agents:GatedAgent"]


def poll_until(url: str, field: str, values: set[str]) -> dict[str, Any]:
    """Poll like an old client does, until ``field`` takes one of ``values``."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        body: dict[str, Any] = httpx.get(url).json()
        if body.get(field) in values:
            return body
        time.sleep(0.05)
    raise AssertionError(f"{url} never reached {field} in {values}")


def test_jobs_survive_a_crash_and_restart(tmp_path: Path) -> None:
    """Start, dedupe, complete; then kill -9 mid-job and restart: history stays, the lost job is interrupted."""
    store = ["--store", f"sqlite:///{tmp_path / 'jobcast.db'}", "--demo-seconds", "0.3", *AGENTS]
    log = tmp_path / "server.log"
    with jobcast_server(store, log) as server:
        first = httpx.post(f"{server.url}/api/projects/acme/agents/financial/refresh")
        assert first.status_code == 202
        again = httpx.post(f"{server.url}/api/projects/acme/agents/financial/refresh")
        assert again.status_code == 200 and again.json()["deduplicated"] is True
        job_id = first.json()["job"]["job_id"]
        assert again.json()["job"]["job_id"] == job_id

        done = poll_until(f"{server.url}/financial_agent/processing_status/acme", "status", {"completed", "failed"})
        assert done["status"] == "completed" and done["result"] == financial_figures("acme")

        gated = httpx.post(f"{server.url}/api/projects/acme/agents/gated/refresh").json()["job"]
        poll_until(f"{server.url}/api/jobs/{gated['job_id']}", "status", {"running"})
        server.kill()

    with jobcast_server(store, log) as server:
        lost = httpx.get(f"{server.url}/api/jobs/{gated['job_id']}").json()
        assert lost["status"] == "failed" and lost["error"]["code"] == "interrupted"
        legacy = httpx.get(f"{server.url}/gated_agent/processing_status/acme").json()
        assert legacy["status"] == "failed" and legacy["error_code"] == "interrupted"
        history = httpx.get(f"{server.url}/api/projects/acme/jobs").json()["jobs"]
        assert [(j["agent"], j["status"]) for j in history] == [("gated", "failed"), ("financial", "completed")]
        status = httpx.get(f"{server.url}/api/projects/acme").json()
        assert status["agents"]["financial"]["last_result"] == financial_figures("acme")
        assert status["seq"] == 6  # 3 for financial, 2 for gated, 1 for its interruption
    assert "Traceback" not in log.read_text()


def test_sigterm_stops_the_server_cleanly_mid_job(tmp_path: Path) -> None:
    """An operator's SIGTERM stops the server promptly even with a job running, and the job is marked interrupted."""
    args = ["--store", f"sqlite:///{tmp_path / 'j.db'}", *AGENTS]
    with jobcast_server(args, tmp_path / "server.log") as server:
        job = httpx.post(f"{server.url}/api/projects/p1/agents/gated/refresh").json()["job"]
        poll_until(f"{server.url}/api/jobs/{job['job_id']}", "status", {"running"})
        # uvicorn re-raises the signal once shutdown is complete, as a well-behaved process does
        assert server.stop() in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.log
    with jobcast_server(args, tmp_path / "server.log") as server:
        final = httpx.get(f"{server.url}/api/jobs/{job['job_id']}").json()
        assert final["status"] == "failed" and "shut down" in final["error"]["message"]


def test_a_bad_agent_spec_stops_start_up_with_one_line(tmp_path: Path) -> None:
    """jobcast serve --agent with a bad spec exits 2 with one line naming the spec and the reason."""
    result = subprocess.run(
        [*jobcast_command(), "serve", "--agent", "no_such_module:Agent", "--store", "memory://"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no_such_module:Agent" in lines[0] and "cannot import" in lines[0]


def test_the_app_is_an_asgi_factory_for_uvicorn(tmp_path: Path) -> None:
    """uvicorn server.app:create_app --factory serves the same app, configured by JOBCAST_* variables."""
    port = free_port()
    env = {"JOBCAST_STORE": "memory://", "JOBCAST_AGENTS": "tests.agents:QuickAgent"}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "server.app:create_app", "--factory", "--port", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                agents = httpx.get(f"http://127.0.0.1:{port}/api/agents").json()["agents"]
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.05)
        assert [a["name"] for a in agents] == ["quick"]
    finally:
        process.terminate()
        process.wait(WAIT)


def test_sigterm_ends_open_streams_and_long_polls_cleanly(tmp_path: Path) -> None:
    """Open SSE streams and long-polls end at once on SIGTERM: the poll gets its reply, the log no traceback."""
    import threading

    with jobcast_server(["--store", "memory://", "--shutdown-grace", "30"], tmp_path / "server.log") as server:
        epoch = httpx.get(f"{server.url}/api/projects/p1/events", params={"wait": 0}).json()["epoch"]
        replies: list[int] = []
        stream_ended = threading.Event()

        def long_poll() -> None:
            params = {"epoch": epoch, "after": 0, "wait": 30}
            replies.append(httpx.get(f"{server.url}/api/projects/p1/events", params=params, timeout=WAIT).status_code)

        def stream() -> None:
            with httpx.stream("GET", f"{server.url}/api/projects/p1/events/stream", timeout=WAIT) as response:
                for _ in response.iter_lines():
                    pass
            stream_ended.set()

        threads = [threading.Thread(target=long_poll), threading.Thread(target=stream)]
        threads[0].start()
        poll_until(f"{server.url}/healthz", "status", {"ok"})  # the long-poll went out first
        threads[1].start()
        deadline = time.monotonic() + WAIT
        while httpx.get(f"{server.url}/healthz").json()["subscribers"] != 1:  # the stream has joined
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.stop()  # with a 30 s grace, only the early end of the streams makes this return in time
        for thread in threads:
            thread.join(WAIT)
        assert replies == [200] and stream_ended.is_set()
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log and "timeout graceful shutdown exceeded" not in log
