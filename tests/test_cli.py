"""``jobcast watch | refresh | status | cancel`` as a user runs them: subprocesses against real servers."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pexpect
import pytest

from jobcast.agents.builtin import financial_figures, performance_figures
from jobcast.client import cli as client_cli
from jobcast.client import commands
from tests import servers
from tests.servers import JobcastServer, free_port, jobcast_command, jobcast_server
from tests.support import WAIT

TEST_AGENTS = ("Quick", "Failing", "Stubborn", "Sleepy")
FAST = ["--store", "memory://", "--demo-seconds", "0.8", "--progress-interval", "0.1"]
FAST += [f"--agent=tests.agents:{name}Agent" for name in TEST_AGENTS]
FAST += ["--agent=jobcast.agents.builtin:FinancialAgent", "--agent=jobcast.agents.builtin:PerformanceAgent"]
SLOW = ["--demo-seconds", "30", "--agent=tests.agents:SleepyAgent", "--agent=tests.agents:QuickAgent"]
ANSI = re.compile(r"\x1b\[")
ANSI_SEQUENCE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobcastServer]:
    """A server whose demo agents finish in under a second."""
    with jobcast_server(FAST, tmp_path_factory.mktemp("fast") / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobcastServer]:
    """A server whose sleepy agent runs for 30 s unless cancelled."""
    args = ["--store", "memory://", *SLOW]
    with jobcast_server(args, tmp_path_factory.mktemp("slow") / "server.log") as server:
        yield server


def interruptible(*args: str) -> list[str]:
    """The jobcast command, started so that SIGINT is not ignored, so Ctrl-C reaches it as in a terminal.

    A test run from a non-interactive shell's background job inherits SIGINT ignored,
    and Python then never raises KeyboardInterrupt; this restores the default first.
    """
    restore = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", restore, *jobcast_command(), *args]


def jobcast(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the jobcast script to the end, as a script in CI would."""
    environ = {**os.environ, **(env or {})}
    return subprocess.run([*jobcast_command(), *args], capture_output=True, text=True, timeout=2 * WAIT, env=environ)


class Lines:
    """A running process's stdout, read by a thread, so a test can wait for a line with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def until(self, predicate: Callable[[str], bool]) -> str:
        while True:
            line = self._queue.get(timeout=WAIT)
            assert line is not None, f"stdout ended; it had: {self.seen}"
            self.seen.append(line)
            if predicate(line):
                return line

    def rest(self) -> list[str]:
        """Every line, once stdout has ended."""
        self._thread.join(WAIT)
        while (line := self._queue.get(timeout=WAIT)) is not None:
            self.seen.append(line)
        return self.seen


@dataclasses.dataclass
class Running:
    process: subprocess.Popen[str]
    stdout: Lines
    stderr: str = ""


@contextlib.contextmanager
def spawn(*args: str) -> Iterator[Running]:
    """Run the jobcast script in the background; on exit it is killed if need be, and its pipes closed."""
    with subprocess.Popen(interruptible(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        running = Running(process, Lines(process.stdout))  # type: ignore[arg-type]
        try:
            yield running
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(WAIT)
            running.stdout.rest()
            running.stderr = process.stderr.read()  # type: ignore[union-attr]


def records(stdout: str | list[str]) -> list[dict[str, Any]]:
    """Every stdout line as JSON: fails if any line is not."""
    lines = stdout.splitlines() if isinstance(stdout, str) else stdout
    return [json.loads(line) for line in lines]


def is_job(status: str) -> Callable[[str], bool]:
    return lambda line: line.startswith('{"type":"job"') and json.loads(line)["job"]["status"] == status


def one_clean_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


# -- refresh: exit codes from outcomes -------------------------------------------------------


def test_refresh_follows_two_agents_and_prints_their_headlines(fast: JobcastServer) -> None:
    """Two agents at once: both are followed to the end, each headline is printed, in plain text, exit 0."""
    result = jobcast("refresh", "two", "--agent", "financial", "--agent", "performance", "--url", fast.url)
    assert result.returncode == 0, result.stderr
    assert financial_figures("two")["summary"] in result.stdout
    assert performance_figures("two")["summary"] in result.stdout
    finals = [line.split()[:2] for line in result.stdout.splitlines() if "completed" in line]
    assert sorted(finals) == [["financial", "completed"], ["performance", "completed"]]
    assert not ANSI.search(result.stdout) and "━" not in result.stdout and result.stderr == ""


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
def test_json_output_is_ndjson_holding_every_transition(fast: JobcastServer, transport: str) -> None:
    """--json prints only JSON lines: started records, each job's transitions in seq order, then final records."""
    project = f"ndjson-{transport}"
    args = ["refresh", project, "--agent", "quick", "--agent", "financial", "--json", "--transport", transport]
    result = jobcast(*args, "--url", fast.url)
    assert result.returncode == 0, result.stderr
    lines = records(result.stdout)
    assert {line["type"] for line in lines} <= {"started", "job", "progress", "output", "final"}  # financial streams
    started = {line["agent"]: line["job"]["job_id"] for line in lines if line["type"] == "started"}
    assert set(started) == {"quick", "financial"}
    for agent, job_id in started.items():
        transitions = [line["job"]["status"] for line in lines if line["type"] == "job" and line["agent"] == agent]
        assert transitions == ["queued", "running", "completed"], (agent, transitions)
        assert all(line["job_id"] == job_id for line in lines if line["type"] == "progress" and line["agent"] == agent)
    seqs = [line["seq"] for line in lines if line["type"] == "job"]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) == 6
    finals = [line for line in lines if line["type"] == "final"]
    assert [(line["agent"], line["status"]) for line in finals] == [("quick", "completed"), ("financial", "completed")]
    assert finals[1]["job"]["result"] == financial_figures(project)


@pytest.mark.parametrize(
    ("agents", "code", "says"),
    [
        (["failing"], 1, "ledger for {project} is offline"),
        (["stubborn"], 3, "did not finish within its 0.2 s limit"),
        (["failing", "stubborn", "quick"], 1, "project={project}"),
        (["quick", "stubborn"], 3, "project={project}"),
    ],
)
def test_the_exit_code_is_the_worst_outcome(fast: JobcastServer, agents: list[str], code: int, says: str) -> None:
    """A failed job exits 1, a timed-out one 3; with several, failed beats timed out beats completed."""
    project = "worst-" + "-".join(agents)
    result = jobcast("refresh", project, *(f"--agent={agent}" for agent in agents), "--url", fast.url)
    assert result.returncode == code, result.stdout + result.stderr
    assert says.format(project=project) in result.stdout and "Traceback" not in result.stderr


def test_a_cancelled_job_exits_4(slow: JobcastServer) -> None:
    """refresh exits 4 when another client cancels its job; cancel itself exits 0 and says so."""
    with spawn("refresh", "cancel-me", "--agent", "sleepy", "--json", "--url", slow.url) as follower:
        follower.stdout.until(is_job("running"))
        cancelled = jobcast("cancel", "cancel-me", "--agent", "sleepy", "--url", slow.url)
        assert cancelled.returncode == 0 and "cancel requested" in cancelled.stdout, cancelled.stderr
        assert follower.process.wait(WAIT) == 4
    final = [record for record in records(follower.stdout.seen) if record["type"] == "final"]
    assert final[0]["status"] == "cancelled" and final[0]["job"]["error"]["message"] == "cancelled on request"


def test_refresh_joins_a_running_job_and_its_timeout_exits_3(slow: JobcastServer) -> None:
    """refresh joins the job already running; --timeout S gives up after S seconds: exit 3 and one clear line."""
    job_id = httpx.post(f"{slow.url}/api/projects/too-slow/agents/sleepy/refresh").json()["job"]["job_id"]
    result = jobcast("refresh", "too-slow", "--agent", "sleepy", "--timeout", "1", "--url", slow.url)
    assert result.returncode == 3
    assert re.search(rf"^sleepy +joined +job {job_id} \((queued|running)\)$", result.stdout, re.MULTILINE)
    assert one_clean_line(result.stderr) == (
        "jobcast: --timeout 1 s ran out before sleepy finished; the jobs go on running on the server"
    )
    assert httpx.get(f"{slow.url}/api/jobs/{job_id}").json()["status"] == "running"
    httpx.post(f"{slow.url}/api/projects/too-slow/agents/sleepy/cancel")


def test_no_wait_prints_the_job_ids_and_exits_0(fast: JobcastServer) -> None:
    """--no-wait starts the jobs, prints their ids (or NDJSON started records) and exits 0 at once."""
    result = jobcast("refresh", "no-wait", "--agent", "quick", "--no-wait", "--url", fast.url)
    assert result.returncode == 0, result.stderr
    job_id = re.search(r"job ([0-9a-f]{32})", result.stdout)
    assert job_id and httpx.get(f"{fast.url}/api/jobs/{job_id[1]}").status_code == 200
    as_json = records(
        jobcast("refresh", "no-wait-json", "--agent", "quick", "--no-wait", "--json", "--url", fast.url).stdout
    )
    assert [(r["type"], r["agent"], len(r["job"]["job_id"])) for r in as_json] == [("started", "quick", 32)]


# -- status, cancel, usage and the server's refusals ----------------------------------------


def test_status_prints_each_agent_and_reads_jobcast_url(fast: JobcastServer) -> None:
    """status prints a row per agent with its last result; JOBCAST_URL stands in for --url; --json is one record."""
    assert jobcast("refresh", "st", "--agent", "financial", "--url", fast.url).returncode == 0
    result = jobcast("status", "st", env={"JOBCAST_URL": fast.url})
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["AGENT", "STATE", "JOB", "ELAPSED", "DETAIL", "LAST", "RESULT"]
    financial = next(row for row in rows if row.startswith("financial"))
    assert "completed" in financial and financial_figures("st")["summary"] in financial
    assert {row.split()[0] for row in rows} == {"quick", "failing", "stubborn", "sleepy", "financial", "performance"}
    (project,) = records(jobcast("status", "st", "--json", "--url", fast.url).stdout)
    assert project["agents"]["financial"]["last_result"] == financial_figures("st")


def test_status_shows_why_a_job_failed(fast: JobcastServer) -> None:
    """A failed job's row in status carries its error code and message, not just a dash."""
    assert jobcast("refresh", "st-fail", "--agent", "failing", "--url", fast.url).returncode == 1
    result = jobcast("status", "st-fail", "--url", fast.url)
    failing = next(row for row in result.stdout.splitlines() if row.startswith("failing"))
    assert failing.split()[1] == "failed" and "agent_error: ledger for st-fail is offline" in failing


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["refresh", "p"], "the following arguments are required: --agent"),
        (["status", "p", "--transport", "ws"], "unrecognized arguments: --transport ws"),
        (["cancel", "p", "--agent", "quick", "--transport", "sse"], "unrecognized arguments: --transport sse"),
        (["refresh", "p", "--agent", "legal"], "no agent named 'legal'"),
        (["refresh", "bad!id", "--agent", "quick"], "must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63} (invalid_project_id)"),
        (["cancel", "idle", "--agent", "quick"], "no queued or running 'quick' job for project 'idle'"),
        (["watch", "p", "--agent", "legal"], "no agent named 'legal'"),
        (["watch", "p", "--transport", "pigeon"], "invalid choice: 'pigeon'"),
        (["refresh", "p", "--agent", "quick", "--timeout", "0"], "'0' is not a number of seconds greater than 0"),
        (["refresh", "p", "--agent", "quick", "--timeout", "١٠"], "'١٠' is not a number of seconds greater than 0"),
        (["status", "p", "--url", "ftp://example.com"], "'ftp://example.com' is not a server URL"),
    ],
)
def test_usage_errors_and_refused_input_exit_2_with_the_reason(fast: JobcastServer, args: list[str], says: str) -> None:
    """Bad usage, and input the server refuses, exit 2 with the reason (the server's message) and no traceback."""
    result = jobcast(*args, *(["--url", fast.url] if "--url" not in args else []))
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [["watch", "p"], ["refresh", "p", "--agent", "quick"], ["status", "p", "--json"], ["cancel", "p", "--agent", "q"]],
)
def test_an_unreachable_server_exits_69_in_one_line(args: list[str]) -> None:
    """Every command says in one line that it cannot reach the server, and exits 69."""
    url = f"http://127.0.0.1:{free_port()}"
    result = jobcast(*args, "--url", url)
    assert result.returncode == 69
    assert one_clean_line(result.stderr) == f"jobcast: cannot reach the jobcast server at {url}: connection refused"
    assert result.stdout == ""


def test_a_bug_is_one_line_and_exit_70(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An unexpected exception in a command is reported in one line, not a traceback."""

    async def broken(options: Any, out: Any) -> Any:
        raise RuntimeError("the flux capacitor")

    monkeypatch.setitem(commands.COMMANDS, "status", broken)
    assert client_cli.main(["status", "p"]) == 70
    assert capsys.readouterr().err == "jobcast: internal error: RuntimeError: the flux capacitor (please report this)\n"


# -- watch, Ctrl-C and the terminal ------------------------------------------------------------


@pytest.mark.parametrize("output", ["--json", "plain"])
def test_watch_follows_until_ctrl_c_then_exits_130(fast: JobcastServer, output: str) -> None:
    """watch shows the snapshot and each transition live; Ctrl-C ends it with 130 and no traceback."""
    project = f"watch-{output.strip('-')}"
    json_flag = [output] if output == "--json" else []
    with spawn("watch", project, "--agent", "quick", "--url", fast.url, *json_flag) as watcher:
        watcher.stdout.until(lambda line: "snapshot" in line or line.startswith("quick "))
        httpx.post(f"{fast.url}/api/projects/{project}/agents/quick/refresh")
        watcher.stdout.until(is_job("completed") if json_flag else lambda line: "completed" in line)
        watcher.process.send_signal(signal.SIGINT)
        assert watcher.process.wait(WAIT) == 130
    seen = watcher.stdout.seen
    assert watcher.stderr == ""
    if output == "--json":
        types = [record["type"] for record in records(seen)]
        assert types[0] == "snapshot" and types.count("job") == 3
    else:
        assert seen[-1].split()[:2] == ["quick", "completed"] and not ANSI.search("".join(seen))


def pty(*args: str) -> pexpect.spawn:
    command, *rest = interruptible(*args)
    return pexpect.spawn(
        command, rest, env={**os.environ, "TERM": "xterm-256color"}, dimensions=(24, 120), encoding="utf-8",
        timeout=WAIT,
    )  # fmt: skip


def test_refresh_in_a_terminal_draws_the_live_display_and_ends_cleanly(fast: JobcastServer) -> None:
    """Under a pseudo-terminal, refresh draws bars and percents, then restores the cursor and prints the headline."""
    child = pty("refresh", "tty", "--agent", "financial", "--url", fast.url)
    child.expect("jobcast · tty")
    child.expect(r"financial.*running.*━.*\d+%")
    child.expect("Reading the ledgers of tty")  # its streamed narrative, under its row while it runs
    child.expect(re.escape(financial_figures("tty")["summary"]))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    headline = re.escape(financial_figures("tty")["summary"])
    assert re.search(r"\x1b\[\?25h\r?\n?financial +completed +\d\.\ds  " + headline + r"\r\n$", child.before)


def test_refresh_in_an_80_column_terminal_shows_whole_names_and_states(fast: JobcastServer) -> None:
    """At 80 columns the live display keeps agent names and states whole, each step on its own line below."""
    command, *rest = interruptible(
        "refresh", "tty80", "--agent", "financial", "--agent", "performance", "--url", fast.url
    )
    screen = io.StringIO()
    child = pexpect.spawn(
        command, rest, env={**os.environ, "TERM": "xterm-256color"}, dimensions=(24, 80), encoding="utf-8",
        timeout=WAIT,
    )  # fmt: skip
    child.logfile_read = screen
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    live, _, printed = screen.getvalue().partition("\x1b[?25h")  # the live display ends by showing the cursor
    drawn = ANSI_SEQUENCE.sub("", live).splitlines()
    assert all(len(line.rstrip()) <= 80 for line in drawn) and "…" not in "".join(drawn)
    assert any(re.fullmatch(r"financial  +running  +━+ +\d+% +\d+\.\ds", line.rstrip()) for line in drawn)
    assert any(re.fullmatch(r"performance  +completed  +━+ +100% +\d+\.\ds", line.rstrip()) for line in drawn)
    summary = financial_figures("tty80")["summary"]
    assert f"  {summary}" in [line.rstrip() for line in drawn]  # the headline, on its own line under the row
    assert re.match(r"financial +completed +\d\.\ds  " + re.escape(summary), printed)


def test_watch_in_a_terminal_stops_cleanly_on_ctrl_c(fast: JobcastServer) -> None:
    """Under a pseudo-terminal, watch draws its table and Ctrl-C ends it with 130, the cursor restored."""
    child = pty("watch", "tty-watch", "--url", fast.url)
    child.expect(r"jobcast · tty-watch")
    child.expect(r"performance.*idle")
    child.expect("over ws")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    assert "\x1b[?25h" in child.before and "Traceback" not in child.before


# -- resume after the server goes away mid-job ------------------------------------------------


@pytest.mark.timeout(90)
def test_refresh_resumes_after_the_server_dies_mid_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server is killed mid-job and restarted on the same port and store: refresh resumes from its cursor."""
    port = free_port()
    monkeypatch.setattr(servers, "free_port", lambda: port)
    args = ["--store", f"sqlite:///{tmp_path / 'jobs.db'}", *SLOW]
    refresh = ["refresh", "crash", "--agent", "sleepy", "--json"]
    with jobcast_server(args, tmp_path / "server.log") as server, spawn(*refresh, "--url", server.url) as follower:
        follower.stdout.until(is_job("running"))
        server.kill()
        with jobcast_server(args, tmp_path / "server.log"):
            assert follower.process.wait(2 * WAIT) == 1
            status = jobcast("status", "crash", "--url", server.url)
    sleepy = next(line for line in status.stdout.splitlines() if line.startswith("sleepy"))
    assert sleepy.split()[1] == "failed" and "interrupted: the server stopped before the job finished" in sleepy
    output = records(follower.stdout.seen)
    transitions = [(r["seq"], r["job"]["status"]) for r in output if r["type"] == "job"]
    assert transitions == [(1, "queued"), (2, "running"), (3, "failed")]
    assert output[-1]["type"] == "final" and output[-1]["job"]["error"]["code"] == "interrupted"
    assert "lost the connection" in follower.stderr and "Traceback" not in follower.stderr
    assert "reconnected over ws; resumed after seq 2" in follower.stderr


# -- scheduling: --priority, --if-active, and waits that explain themselves ----------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobcastServer]:
    """One running job per project: a second agent's job waits, queued, for the project limit."""
    args = ["--store", "memory://", *SLOW, "--max-running-per-project", "1"]
    with jobcast_server(args, tmp_path_factory.mktemp("limited") / "server.log") as server:
        yield server


def test_refresh_takes_priority_and_if_active_and_status_says_why_a_job_waits(limited: JobcastServer) -> None:
    first = jobcast("refresh", "lim", "--agent", "sleepy", "--no-wait", "--url", limited.url)
    assert first.returncode == 0, first.stderr
    second = jobcast(
        "refresh", "lim", "--agent", "quick", "--no-wait", "--priority", "high", "--json", "--url", limited.url
    )
    (started,) = records(second.stdout)
    assert started["job"]["priority"] == "high" and started["job"]["status"] == "queued"
    status = jobcast("status", "lim", "--url", limited.url)
    quick = next(row for row in status.stdout.splitlines() if row.startswith("quick"))
    assert "Queued: 1st in line, waiting for the project limit (1 of 1)" in quick, status.stdout
    follow = jobcast("refresh", "lim", "--agent", "sleepy", "--no-wait", "--if-active", "queue", "--json", "--url",
                     limited.url)  # fmt: skip
    (follow_up,) = records(follow.stdout)
    assert not follow_up["deduplicated"] and follow_up["job"]["after"] is not None
    for agent in ("sleepy", "quick"):
        jobcast("cancel", "lim", "--agent", agent, "--url", limited.url)


def test_watch_shows_a_queued_jobs_place_as_it_arrives(limited: JobcastServer) -> None:
    assert jobcast("refresh", "lim-watch", "--agent", "sleepy", "--no-wait", "--url", limited.url).returncode == 0
    with spawn("watch", "lim-watch", "--url", limited.url) as watcher:
        watcher.stdout.until(lambda line: line.startswith("sleepy "))
        httpx.post(f"{limited.url}/api/projects/lim-watch/agents/quick/refresh")
        line = watcher.stdout.until(lambda line: "Queued:" in line)
        watcher.process.send_signal(signal.SIGINT)
        assert watcher.process.wait(WAIT) == 130
    assert "Queued: 1st in line, waiting for the project limit (1 of 1)" in line
    jobcast("cancel", "lim-watch", "--agent", "sleepy", "--url", limited.url)


@pytest.mark.parametrize(("args", "says"), [(["--priority", "urgent"], "invalid choice: 'urgent'"),
                                            (["--if-active", "join"], "invalid choice: 'join'")])  # fmt: skip
def test_a_bad_priority_or_if_active_is_a_usage_error(args: list[str], says: str) -> None:
    result = jobcast("refresh", "p", "--agent", "quick", *args, "--url", "http://127.0.0.1:9")
    assert result.returncode == 2 and says in result.stderr


# -- retries: the CLI follows one job through its attempts ---------------------------------------


def test_refresh_follows_a_job_through_its_retries_and_a_final_failure_exits_1(tmp_path: Path) -> None:
    args = ["--store", "memory://", "--agent", "tests.agents:OverloadedAgent", "--agent", "tests.agents:FlakyAgent"]
    with jobcast_server(args, tmp_path / "server.log") as server:
        failed = jobcast("refresh", "r", "--agent", "overloaded", "--url", server.url)
        flaky = jobcast("refresh", "r", "--agent", "flaky", "--json", "--url", server.url)
        status = jobcast("status", "r", "--url", server.url)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    retrying = [line for line in failed.stdout.splitlines() if line.split()[1:2] == ["retrying"]]
    assert retrying and "(attempt 2 of 2): provider overloaded" in retrying[0], failed.stdout
    assert failed.stdout.splitlines()[-1].split()[:2] == ["overloaded", "failed"]
    assert flaky.returncode == 0
    states = [r["job"]["status"] for r in records(flaky.stdout) if r["type"] == "job"]
    assert states == ["queued", "running", "retrying", "running", "retrying", "running", "completed"]
    overloaded = next(row for row in status.stdout.splitlines() if row.startswith("overloaded"))
    assert "transient_error: provider overloaded" in overloaded


def test_the_status_and_live_lines_say_how_long_is_left_and_when_a_retry_comes() -> None:
    from jobcast.client.render import Row, detail, eta_text, retry_text, status_rows

    assert eta_text(40.2, False) == "about 40 s left" and eta_text(200, False) == "about 3 min left"
    assert eta_text(None, False) == "" and eta_text(5, True) == "taking longer than usual"
    error = {"code": "transient_error", "message": "provider overloaded"}
    job = {"job_id": "j" * 32, "status": "retrying", "attempt": 2, "max_attempts": 3,
           "retry_at": "2026-01-01T00:00:12.000Z", "error": error}  # fmt: skip
    wall = 1767225600.0  # 2026-01-01T00:00:00Z
    assert retry_text(job, wall) == "Retrying in 12 s (attempt 2 of 3): provider overloaded"
    running = {"job_id": "k" * 32, "status": "running", "elapsed_s": 3.0, "progress": {"percent": 30, "message": "x"},
               "eta_s": 7.0, "overdue": False}  # fmt: skip
    assert detail(Row("financial", job=running, percent=30, message="x", eta_s=7.0), 0.0).endswith("(about 7 s left)")
    (row,) = status_rows({"agents": {"financial": {"job": running, "last_result": None}}})
    assert row[4] == "30% x (about 7 s left)"


def test_refresh_prints_the_streamed_output_plain_when_piped_and_as_records_with_json(tmp_path: Path) -> None:
    from tests.agents import STREAMED_TEXT

    (tmp_path / "out").touch()  # the streaming agent's halfway gate, open from the start
    env = {"JOBCAST_TEST_GATES": str(tmp_path)}
    args = ["--store", "memory://", "--agent", "tests.agents:StreamingAgent"]
    with jobcast_server(args, tmp_path / "server.log", env) as server:
        plain = jobcast("refresh", "out", "--agent", "streaming", "--url", server.url)
        as_json = jobcast("refresh", "out", "--agent", "streaming", "--json", "--url", server.url)
    assert plain.returncode == 0, plain.stderr
    lines = [line for line in plain.stdout.splitlines() if line.startswith("streaming> ")]
    assert "".join(line.removeprefix("streaming> ") for line in lines) == STREAMED_TEXT
    outputs = [r for r in records(as_json.stdout) if r["type"] == "output"]
    text = ""
    for record in outputs:
        text = text[: record["offset"]] + record["text"]
    assert outputs and text == STREAMED_TEXT
