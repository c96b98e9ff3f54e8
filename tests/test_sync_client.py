"""The synchronous client, ``jobcast.client.Client``, against real ``jobcast serve`` processes.

Jobs that must stay running until a test says so use ``FileGatedAgent``: it waits for the
file ``<gates>/<project>``, which the test creates. Nothing here sleeps for a fixed time:
a test waits on a condition (:func:`tests.support.eventually`), or on the client itself.
"""

from __future__ import annotations

import ast
import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from jobcast.client import (
    Client,
    ClientError,
    Cursor,
    InvalidURL,
    Outputs,
    Reconnect,
    ServerRefused,
    ServerUnreachable,
    WaitTimedOut,
    cli,
    subscribe,
    sync,
)
from jobcast.client.errors import TransportError
from jobcast.client.exitcodes import ExitCode
from tests.agents import STREAMED_TEXT
from tests.guarded import SECRET, Tokens
from tests.servers import JobcastServer, free_port, jobcast_server
from tests.support import WAIT, eventually

AGENTS = ["quick", "sleepy", "failing", "filegated", "streaming"]
SPECS = {
    "quick": "tests.agents:QuickAgent",
    "sleepy": "tests.agents:SleepyAgent",
    "failing": "tests.agents:FailingAgent",
    "filegated": "tests.agents:FileGatedAgent",
    "streaming": "tests.agents:StreamingAgent",
}
Message = dict[str, Any]


@pytest.fixture(scope="module")
def gates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder FileGatedAgent and StreamingAgent watch: ``<gates>/<project>`` lets the project's job finish."""
    return tmp_path_factory.mktemp("gates")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, gates: Path) -> Iterator[JobcastServer]:
    log = tmp_path_factory.mktemp("sync") / "server.log"
    args = ["--store", "memory://", "--demo-seconds", "30", "--progress-interval", "0.1"]
    args += [option for agent in AGENTS for option in ("--agent", SPECS[agent])]
    with jobcast_server(args, log, env={"JOBCAST_TEST_GATES": str(gates)}) as running:
        yield running


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobcastServer]:
    """A server with a secret (from JOBCAST_SECRET, as an operator passes it): every route needs a token."""
    log = tmp_path_factory.mktemp("sync-guarded") / "server.log"
    args = ["--store", "memory://", "--agent", SPECS["quick"]]
    with jobcast_server(args, log, env={"JOBCAST_SECRET": SECRET}) as running:
        yield running


@pytest.fixture
def client(server: JobcastServer) -> Iterator[Client]:
    with Client(server.url, timeout=WAIT) as opened:
        yield opened


def open_gate(gates: Path, project: str) -> None:
    (gates / project).touch()


def until(messages: Iterable[Message], predicate: Callable[[Message], bool]) -> list[Message]:
    """Every message up to and including the first that satisfies ``predicate`` (the test's timeout bounds it)."""
    seen = []
    for message in messages:
        seen.append(message)
        if predicate(message):
            return seen
    raise AssertionError(f"the watch ended after {seen}")


def final(job_id: str) -> Callable[[Message], bool]:
    return lambda m: m["type"] == "job" and m["job"]["job_id"] == job_id and m["job"]["status"] == "completed"


async def take(events: AsyncIterable[Message], count: int) -> AsyncIterator[Message]:
    """The first ``count`` messages of an async subscription."""
    async for message in events:
        yield message
        count -= 1
        if count == 0:
            return


def exit_code_of(error: ClientError) -> int:
    """The error's exit code, which a library user reads as ``error.exit_code``: the CLI exits with the same."""
    assert cli._failed(error) == error.exit_code
    return error.exit_code


class Recording(httpx.BaseTransport):
    """Sends every request for real, and keeps its URL: what the client asked, and in which order."""

    def __init__(self) -> None:
        self.urls: list[httpx.URL] = []
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(request.url)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()

    def polls(self) -> list[dict[str, str]]:
        """The query of each long-poll sent so far."""
        return [dict(url.params) for url in list(self.urls) if url.path.endswith("/events")]


# -- the HTTP actions ---------------------------------------------------------------------------


def test_refresh_then_wait_returns_the_final_record_from_a_long_poll(server: JobcastServer, gates: Path) -> None:
    """wait() long-polls the job's project from a cursor and returns the whole record once the job completes."""
    recording = Recording()
    with Client(server.url, timeout=WAIT, transport=recording) as client:
        started = client.refresh("sync-wait", "filegated")
        assert not started.deduplicated and started.agent == "filegated"
        assert started.job["status"] in ("queued", "running")

        def open_once_waiting() -> None:
            """The gate opens once wait() is holding a long-poll: only then can the job end."""
            eventually(lambda: any(p["wait"] != "0" for p in recording.polls()), what="a long-poll")
            open_gate(gates, "sync-wait")

        opener = threading.Thread(target=open_once_waiting)
        opener.start()
        job = client.wait(started.job["job_id"], timeout=WAIT)
        opener.join(WAIT)
    assert job["job_id"] == started.job["job_id"] and job["status"] == "completed"
    assert job["result"] == {"project": "sync-wait", "opened": True}
    first, *resumed = recording.polls()
    assert first == {"wait": "0"}  # the snapshot, for the cursor
    # then from the cursor, each held by the server until there is news (or the deadline)
    assert resumed and all(p["epoch"] and int(p["after"]) >= 1 and int(p["wait"]) > 0 for p in resumed)


def test_refresh_joins_the_active_job_unless_asked_to_queue_another(client: Client, gates: Path) -> None:
    """A second refresh joins the running job (deduplicated); ``if_active="queue"`` queues a follow-up instead."""
    first = client.refresh("sync-dedup", "filegated")
    again = client.refresh("sync-dedup", "filegated")
    assert again.deduplicated and again.job["job_id"] == first.job["job_id"]
    follow_up = client.refresh("sync-dedup", "filegated", priority="high", if_active="queue")
    assert not follow_up.deduplicated and follow_up.job["job_id"] != first.job["job_id"]
    assert follow_up.job["status"] == "queued"
    open_gate(gates, "sync-dedup")
    for started in (first, follow_up):
        assert client.wait(started.job["job_id"], WAIT)["status"] == "completed"


def test_cancel_stops_the_job_and_is_refused_when_there_is_nothing_to_cancel(client: Client) -> None:
    """cancel() returns the job with the cancel requested, and it ends cancelled; with no active job: 409."""
    started = client.refresh("sync-cancel", "sleepy")
    cancelled = client.cancel("sync-cancel", "sleepy")
    assert cancelled["job_id"] == started.job["job_id"] and cancelled["cancel_requested"] is True
    job = client.wait(started.job["job_id"], WAIT)
    assert job["status"] == "cancelled" and job["error"]["code"] == "cancelled"
    assert client.cancel("sync-cancel", "sleepy")["job_id"] == job["job_id"]  # idempotent
    with pytest.raises(ServerRefused) as caught:
        client.cancel("sync-cancel", "quick")
    assert (caught.value.code, caught.value.status) == ("nothing_to_cancel", 409)


def test_status_has_every_agents_job_and_last_result(client: Client) -> None:
    """status() is GET /api/projects/{id}: every configured agent, its job, its last result, and the epoch."""
    done = client.wait(client.refresh("sync-status", "quick").job["job_id"], WAIT)
    project = client.status("sync-status")
    assert project["project_id"] == "sync-status" and project["epoch"]
    assert set(project["agents"]) == set(AGENTS)
    assert project["agents"]["quick"]["job"]["job_id"] == done["job_id"]
    assert project["agents"]["quick"]["last_result"] == {"project": "sync-status"}
    assert project["agents"]["sleepy"]["job"] is None
    assert [agent["name"] for agent in client.agents()] == AGENTS


def test_job_reads_one_job_by_id(client: Client) -> None:
    """job() is GET /api/jobs/{job_id}: the record in any state; an unknown id is job_not_found."""
    started = client.refresh("sync-job", "failing")
    failed = client.wait(started.job["job_id"], WAIT)
    assert client.job(started.job["job_id"]) == failed
    assert failed["status"] == "failed" and failed["error"]["code"] == "agent_error"
    with pytest.raises(ServerRefused) as caught:
        client.job("0" * 32)
    assert (caught.value.code, caught.value.status) == ("job_not_found", 404)


def test_history_lists_the_projects_jobs_newest_first(client: Client) -> None:
    """history() is GET /api/projects/{id}/jobs: newest first, ``agent`` and ``limit`` as query parameters."""
    agents = ["quick", "failing", "quick"]
    ids = [client.wait(client.refresh("sync-history", agent).job["job_id"], WAIT)["job_id"] for agent in agents]
    assert [job["job_id"] for job in client.history("sync-history")] == ids[::-1]
    assert [job["job_id"] for job in client.history("sync-history", agent="failing")] == [ids[1]]
    assert [job["job_id"] for job in client.history("sync-history", agent="quick", limit=1)] == [ids[2]]
    assert client.history("sync-history-empty") == []
    refused: list[tuple[dict[str, Any], str, int]] = [
        ({"limit": 0}, "invalid_limit", 400),
        ({"agent": "legal"}, "unknown_agent", 404),
    ]
    for options, code, status in refused:
        with pytest.raises(ServerRefused) as caught:
            client.history("sync-history", **options)
        assert (caught.value.code, caught.value.status) == (code, status)


def test_wait_raises_wait_timed_out_when_the_job_is_not_final_in_time(client: Client) -> None:
    """After ``timeout`` seconds (not much later) wait() raises WaitTimedOut, a TimeoutError; the job runs on."""
    started = client.refresh("sync-timeout", "filegated")
    job_id = started.job["job_id"]
    began = time.monotonic()
    with pytest.raises(WaitTimedOut) as caught:
        client.wait(job_id, 1.5)
    took = time.monotonic() - began
    assert 1.5 <= took < WAIT  # its own timeout, not the long-poll's 25 s
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, ClientError)
    assert (caught.value.job_id, caught.value.timeout) == (job_id, 1.5)
    assert caught.value.job["status"] == "running" and "goes on running" in caught.value.message
    assert exit_code_of(caught.value) == ExitCode.TIMED_OUT  # 3, as for the CLI's --timeout
    with pytest.raises(WaitTimedOut):
        client.wait(job_id, 0)  # looks once
    assert client.job(job_id)["status"] == "running"
    client.cancel("sync-timeout", "filegated")
    assert client.wait(job_id, WAIT)["status"] == "cancelled"


# -- watch ------------------------------------------------------------------------------------


def test_watch_yields_a_snapshot_then_each_transition_and_progress(client: Client, gates: Path) -> None:
    """watch() yields the snapshot, then queued, running (with its progress) and completed, in seq order."""
    with client.watch("sync-watch", poll_wait=1) as messages:
        opening = next(messages)
        assert opening["type"] == "snapshot" and opening["seq"] == 0 and set(opening["agents"]) == set(AGENTS)
        job_id = client.refresh("sync-watch", "filegated").job["job_id"]
        seen = until(messages, lambda m: m["type"] == "progress" and m["job_id"] == job_id)
        open_gate(gates, "sync-watch")
        seen += until(messages, final(job_id))
        cursor = messages.cursor
    transitions = [m for m in seen if m["type"] == "job"]
    assert [m["job"]["status"] for m in transitions] == ["queued", "running", "completed"]
    assert [m["seq"] for m in transitions] == [1, 2, 3] and cursor == Cursor(opening["epoch"], 3)
    progress = next(m for m in seen if m["type"] == "progress")
    assert (progress["percent"], progress["message"], progress["agent"]) == (50.0, "waiting at the gate", "filegated")
    assert seen.index(progress) > seen.index(transitions[1])  # progress follows the running transition


def test_watch_yields_streamed_output_that_adds_up_to_the_whole_text(client: Client, gates: Path) -> None:
    """``output`` messages come over the long-poll as over a stream: by offset, they add up to exactly the text."""
    open_gate(gates, "sync-output")  # the StreamingAgent does not stop halfway
    outputs = Outputs()
    with client.watch("sync-output", poll_wait=1) as messages:
        until(messages, lambda m: m["type"] == "snapshot")
        job_id = client.refresh("sync-output", "streaming").job["job_id"]
        seen = until(messages, final(job_id))
    for message in seen:
        outputs.apply(message)
    assert any(m["type"] == "output" for m in seen)
    assert outputs.text(job_id) == STREAMED_TEXT


def test_watch_from_a_cursor_yields_exactly_what_subscribe_yields_over_long_poll(client: Client) -> None:
    """From the same cursor, watch() and the async subscribe(transport="poll") yield the same dicts."""
    done = client.wait(client.refresh("sync-same", "quick").job["job_id"], WAIT)
    cursor = Cursor(client.status("sync-same")["epoch"], 0)
    mine = list(itertools.islice(client.watch("sync-same", cursor=cursor), 4))

    async def theirs() -> list[Message]:
        async with subscribe(client.endpoint.base, "sync-same", transport="poll", cursor=cursor) as events:
            return [message async for message in take(events, 4)]

    assert mine == anyio.run(theirs)
    assert [m["type"] for m in mine] == ["welcome", "job", "job", "job"] and mine[0]["recovered"] is True
    assert mine[-1]["job"]["job_id"] == done["job_id"] and mine[-1]["job"]["status"] == "completed"


def test_breaking_out_of_a_watch_leaves_no_poll_behind(client: Client, server: JobcastServer) -> None:
    """Between messages no request is in flight: breaking out stops at once, and the client goes on working."""
    watch = client.watch("sync-break")  # poll_wait 25: a poll left waiting would show on /healthz
    for message in watch:
        assert message["type"] == "snapshot"
        break
    eventually(lambda: httpx.get(f"{server.url}/healthz").json()["waiting_polls"] == 0, what="no waiting poll")
    watch.close()
    assert next(watch, None) is None
    assert client.status("sync-break")["project_id"] == "sync-break"


@pytest.mark.timeout(90)
def test_watch_reconnects_with_backoff_and_resumes_from_its_cursor(tmp_path: Path) -> None:
    """The server goes away mid-watch: the watch retries with backoff, then resumes, every transition once."""
    args = ["--store", f"sqlite:///{tmp_path / 'jobs.db'}", "--agent", SPECS["quick"]]
    port, log = free_port(), tmp_path / "server.log"
    retries: list[TransportError] = []
    servers = [JobcastServer(args, log, port=port)]

    def restart_once_retrying() -> None:
        eventually(lambda: retries, what="a retry")
        servers.append(JobcastServer(args, log, port=port))
        servers[-1].wait_ready()

    try:
        servers[0].wait_ready()
        with Client(servers[0].url, timeout=WAIT) as client:
            policy = Reconnect(initial=0.01, maximum=0.05, give_up_after=WAIT)
            watch = client.watch("sync-restart", reconnect=policy, on_retry=lambda error, delay: retries.append(error))
            seen = until(watch, lambda m: m["type"] == "snapshot")
            seen += until(watch, final(client.refresh("sync-restart", "quick").job["job_id"]))
            servers[0].stop()
            restarter = threading.Thread(target=restart_once_retrying)
            restarter.start()
            seen += until(watch, lambda m: m["type"] in ("welcome", "snapshot"))
            restarter.join(WAIT)
            seen += until(watch, final(client.refresh("sync-restart", "quick").job["job_id"]))
    finally:
        for server in servers:
            server.stop()
    assert retries and all(error.transport == "poll" for error in retries)
    reopened = [m for m in seen if m["type"] in ("welcome", "snapshot")][-1]
    assert reopened["type"] == "welcome" and reopened["recovered"] is True
    assert [m["seq"] for m in seen if m["type"] == "job"] == list(range(1, 7))


# -- errors -----------------------------------------------------------------------------------


def test_an_unreachable_server_is_server_unreachable_with_the_clis_exit_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every call raises ServerUnreachable at once; the CLI exits 69 on the same server, with the same line."""
    url = f"http://127.0.0.1:{free_port()}"
    calls: list[Callable[[Client], Any]] = [
        lambda c: c.status("p"),
        lambda c: c.refresh("p", "quick"),
        lambda c: c.cancel("p", "quick"),
        lambda c: c.job("j"),
        lambda c: c.history("p"),
        lambda c: c.wait("j", WAIT),
        lambda c: next(c.watch("p")),
    ]
    with Client(url) as client:
        for call in calls:
            with pytest.raises(ServerUnreachable, match="connection refused") as caught:
                call(client)
            assert caught.value.url == url
    assert cli.main(["status", "p", "--url", url]) == ExitCode.UNAVAILABLE
    from_cli = capsys.readouterr().err
    assert exit_code_of(caught.value) == ExitCode.UNAVAILABLE
    assert capsys.readouterr().err == from_cli == f"jobcast: {caught.value.message}\n"


def test_a_url_that_is_not_http_is_invalid_url() -> None:
    """Client() refuses a URL that is not http(s) as InvalidURL, a usage error (2) for the CLI."""
    with pytest.raises(InvalidURL) as caught:
        Client("ftp://127.0.0.1:8000")
    assert caught.value.url == "ftp://127.0.0.1:8000"
    assert exit_code_of(caught.value) == ExitCode.USAGE


def test_a_refusal_is_server_refused_with_the_servers_code_and_the_clis_exit_code(
    client: Client, server: JobcastServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown agent is ServerRefused("unknown_agent", ..., 404), as ``jobcast cancel`` prints it and exits 2."""
    for call in (lambda: client.refresh("sync-refused", "legal"), lambda: client.cancel("sync-refused", "legal")):
        with pytest.raises(ServerRefused) as caught:
            call()
        assert (caught.value.code, caught.value.status) == ("unknown_agent", 404) and "legal" in caught.value.message
    assert cli.main(["cancel", "sync-refused", "--agent", "legal", "--url", server.url]) == ExitCode.USAGE
    from_cli = capsys.readouterr().err
    assert exit_code_of(caught.value) == ExitCode.USAGE
    assert capsys.readouterr().err == from_cli == f"jobcast: error: {caught.value.message} (unknown_agent)\n"
    with pytest.raises(ServerRefused) as invalid:
        next(client.watch("bad!id"))
    assert (invalid.value.code, invalid.value.status) == ("invalid_project_id", 400)


@pytest.mark.parametrize(
    ("token", "code", "status"),
    [
        (lambda tokens: None, "auth_required", 401),
        (lambda tokens: tokens.forged(), "invalid_token", 401),
        (lambda tokens: tokens.expired(), "token_expired", 401),
        (lambda tokens: tokens.mint(("globex",)), "forbidden", 403),
    ],
    ids=["missing", "forged", "expired", "other-project"],
)
def test_a_server_with_a_secret_refuses_a_bad_token_with_its_auth_code(
    guarded: JobcastServer, token: Callable[[Tokens], str | None], code: str, status: int
) -> None:
    """Without a valid token for the project, every call (watch included) is refused at once with the auth code."""
    with Client(guarded.url, token=token(Tokens())) as client:
        for call in (
            lambda: client.status("acme"),
            lambda: client.refresh("acme", "quick"),
            lambda: next(client.watch("acme")),
        ):
            with pytest.raises(ServerRefused) as caught:
                call()
            assert (caught.value.code, caught.value.status) == (code, status)
    assert exit_code_of(caught.value) == ExitCode.USAGE


def test_a_server_with_a_secret_serves_a_valid_token(guarded: JobcastServer) -> None:
    """A token for the project, sent as Authorization: Bearer, starts, waits for and watches its jobs."""
    with Client(guarded.url, token=Tokens().mint(("acme",)), timeout=WAIT) as client:
        job = client.wait(client.refresh("acme", "quick").job["job_id"], WAIT)
        assert job["status"] == "completed" and job["result"] == {"project": "acme"}
        opening = next(client.watch("acme"))
    assert opening["type"] == "snapshot" and opening["agents"]["quick"]["job"]["job_id"] == job["job_id"]


# -- no event loop --------------------------------------------------------------------------


def test_threads_without_an_event_loop_share_one_client(client: Client) -> None:
    """Plain threads (as a Flask server runs views in) call one shared client at once: no event loop involved."""

    def view(project: str) -> tuple[str, str]:
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()  # nothing runs one here
        job = client.wait(client.refresh(project, "quick").job["job_id"], WAIT)
        return job["status"], next(client.watch(project))["type"]

    outcomes: dict[str, Any] = {}

    def run(project: str) -> None:
        try:
            outcomes[project] = view(project)
        except BaseException as exc:  # reported by the assertion below, not lost in the thread
            outcomes[project] = exc

    threads = [threading.Thread(target=run, args=(f"sync-thread-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads)
    assert outcomes == {f"sync-thread-{n}": ("completed", "snapshot") for n in range(4)}


def test_the_sync_client_imports_no_event_loop() -> None:
    """client/sync.py imports neither asyncio nor anyio: nothing in it needs a loop."""
    tree = ast.parse(Path(sync.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name.split(".")[0] in ("asyncio", "anyio")}
