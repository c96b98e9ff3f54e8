"""End to end against real ``jobcast serve`` processes: a user's HTTP client, a crash, a restart."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from jobcast.agents.builtin import financial_figures
from tests.servers import JobcastServer, free_port, jobcast_command, jobcast_server
from tests.support import WAIT, eventually

AGENTS = ["--agent", "jobcast.agents.builtin:FinancialAgent", "--agent", "tests.agents:GatedAgent"]


def poll_until(url: str, field: str, values: set[str]) -> dict[str, Any]:
    """Poll like an old client does, until ``field`` takes one of ``values``."""

    def reached() -> dict[str, Any] | None:
        body: dict[str, Any] = httpx.get(url).json()
        return body if body.get(field) in values else None

    return eventually(reached, what=f"{url} with {field} in {values}")


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
    """uvicorn jobcast.server.app:create_app --factory serves the same app, configured by JOBCAST_* variables."""
    port = free_port()
    env = {"JOBCAST_STORE": "memory://", "JOBCAST_AGENTS": "tests.agents:QuickAgent"}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "jobcast.server.app:create_app", "--factory", "--port", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def agents() -> list[dict[str, Any]] | None:
            assert process.poll() is None, "uvicorn exited"
            try:
                listed: list[dict[str, Any]] = httpx.get(f"http://127.0.0.1:{port}/api/agents").json()["agents"]
                return listed
            except httpx.TransportError:
                return None  # its port is about to open

        assert [a["name"] for a in eventually(agents)] == ["quick"]
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
        eventually(lambda: httpx.get(f"{server.url}/healthz").json()["subscribers"] == 1, what="the stream joined")
        server.stop()  # with a 30 s grace, only the early end of the streams makes this return in time
        for thread in threads:
            thread.join(WAIT)
        assert replies == [200] and stream_ended.is_set()
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log and "timeout graceful shutdown exceeded" not in log


GATED = ["--agent", "tests.agents:FileGatedAgent"]


def _serve_once(args: list[str]) -> subprocess.CompletedProcess[str]:
    """A ``jobcast serve`` expected to refuse at start: it must exit by itself."""
    return subprocess.run([*jobcast_command(), "serve", *args], capture_output=True, text=True, timeout=WAIT)


def _stored_status(db: Path, job_id: str) -> str:
    """Read the job's status straight from the file, as no jobcast process would."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        row = connection.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    return str(row[0])


def test_a_second_server_on_the_same_sqlite_file_refuses_and_changes_nothing(tmp_path: Path) -> None:
    """A second jobcast serve on the file, on any port, exits 2 with one line naming the owner; the job finishes."""
    gates = tmp_path / "gates"
    gates.mkdir()
    env = {"JOBCAST_TEST_GATES": str(gates)}
    store = ["--store", f"sqlite:///{tmp_path / 'jobcast.db'}", *GATED]
    with jobcast_server(store, tmp_path / "first.log", env=env) as first:
        job = httpx.post(f"{first.url}/api/projects/acme/agents/filegated/refresh").json()["job"]
        poll_until(f"{first.url}/api/jobs/{job['job_id']}", "status", {"running"})

        same_port = _serve_once(["--port", str(first.port), *store])
        assert same_port.returncode == 1 and "Address already in use" in same_port.stderr  # found first
        second = _serve_once(["--port", str(free_port()), *store])
        assert second.returncode == 2, second.stderr
        [line] = second.stderr.strip().splitlines()
        assert f"in use by jobcast process {first.process.pid}" in line and f"serving {first.url}" in line
        assert "--workers" in line and "redis://" in line
        assert _stored_status(tmp_path / "jobcast.db", job["job_id"]) == "running"

        (gates / "acme").touch()
        done = poll_until(f"{first.url}/api/jobs/{job['job_id']}", "status", {"completed", "failed"})
        assert done["status"] == "completed" and done["result"] == {"project": "acme", "opened": True}
    assert "discarding" not in first.log


def test_a_port_clash_is_found_before_the_store_is_touched(tmp_path: Path) -> None:
    """A server whose port is taken exits 1 with one line, and does not recover a crashed server's jobs."""
    gates = tmp_path / "gates"
    gates.mkdir()
    store = ["--store", f"sqlite:///{tmp_path / 'crashed.db'}", *GATED]
    crashed = JobcastServer(store, tmp_path / "crashed.log", env={"JOBCAST_TEST_GATES": str(gates)})
    try:
        crashed.wait_ready()
        job = httpx.post(f"{crashed.url}/api/projects/acme/agents/filegated/refresh").json()["job"]
        poll_until(f"{crashed.url}/api/jobs/{job['job_id']}", "status", {"running"})
    finally:
        crashed.kill()

    with jobcast_server(["--store", "memory://"], tmp_path / "holder.log") as holder:
        clash = _serve_once(["--port", str(holder.port), *store])
        fresh = _serve_once(["--port", str(holder.port), "--store", f"sqlite:///{tmp_path / 'fresh.db'}"])
    assert clash.returncode == 1, clash.stderr
    [line] = clash.stderr.strip().splitlines()
    assert line == f"jobcast: error: cannot listen on 127.0.0.1:{holder.port}: Address already in use"
    assert _stored_status(tmp_path / "crashed.db", job["job_id"]) == "running"  # left for the next real start
    assert fresh.returncode == 1 and not list(tmp_path.glob("fresh.db*"))  # not even created


def test_an_unusable_database_path_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A database in a folder that cannot be made stops start-up with one line naming the path."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    result = _serve_once(["--port", str(free_port()), "--store", f"sqlite:///{blocker / 'jobs.db'}"])
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"jobcast: error: cannot open the SQLite store at {blocker / 'jobs.db'}")


PLUGIN = """
class MyAgent:
    name = "mine"

    def refresh(self, project_id, ctx):
        return {"from": "the current folder"}
"""


def test_agent_modules_load_from_the_current_folder(tmp_path: Path) -> None:
    """jobcast serve --agent myplugin:MyAgent, run beside myplugin.py, loads it without PYTHONPATH."""
    (tmp_path / "myplugin.py").write_text(PLUGIN)
    env = {"PYTHONPATH": ""}
    args = ["--store", "memory://", "--agent", "myplugin:MyAgent"]
    with jobcast_server(args, tmp_path / "server.log", env=env, cwd=tmp_path) as server:
        assert [a["name"] for a in httpx.get(f"{server.url}/api/agents").json()["agents"]] == ["mine"]


def test_app_dir_points_agent_imports_elsewhere(tmp_path: Path) -> None:
    """--app-dir names the folder agent modules come from; a missing folder is one line at start."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "myplugin.py").write_text(PLUGIN)
    args = ["--store", "memory://", "--agent", "myplugin:MyAgent", "--app-dir", str(plugins)]
    with jobcast_server(args, tmp_path / "server.log", env={"PYTHONPATH": ""}) as server:
        assert [a["name"] for a in httpx.get(f"{server.url}/api/agents").json()["agents"]] == ["mine"]
    missing = _serve_once(["--port", str(free_port()), "--app-dir", str(tmp_path / "nowhere")])
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"jobcast: error: --app-dir {str(tmp_path / 'nowhere')!r}: no such folder"
    ]


def test_version_prints_the_installed_version() -> None:
    """jobcast --version prints the package's version and exits 0."""
    result = subprocess.run([*jobcast_command(), "--version"], capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 0
    assert result.stdout.strip() == f"jobcast {importlib.metadata.version('jobcast')}"
