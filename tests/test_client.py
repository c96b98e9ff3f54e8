"""The client library: its pure core, and subscriptions against real ``jobcast serve`` processes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from rich.console import Console

from jobcast.client import (
    Cursor,
    JobcastClient,
    Reconnect,
    ServerRefused,
    ServerUnreachable,
    Subscription,
    Transport,
    subscribe,
)
from jobcast.client import transports as transports_module
from jobcast.client.cursor import Tracker
from jobcast.client.endpoint import Endpoint
from jobcast.client.errors import ConnectFailed, InvalidURL, StreamLost, TransportError, TransportRefused
from jobcast.client.exitcodes import ExitCode, for_statuses
from jobcast.client.render import View, apply, clean, event_lines, headline, job_line, live_table, status_rows
from jobcast.client.settings import server_url
from jobcast.client.transports import Connection, PollReader, SseParser
from tests import servers
from tests.servers import JobcastServer, free_port, jobcast_server
from tests.support import WAIT

TINY = Reconnect(initial=0.01, maximum=0.05, give_up_after=WAIT)
AGENTS = [
    "--agent",
    "tests.agents:QuickAgent",
    "--agent",
    "tests.agents:SleepyAgent",
    "--agent",
    "tests.agents:FailingAgent",
]


def job_event(seq: int, status: str = "running", epoch: str = "e1", agent: str = "quick") -> dict[str, Any]:
    job = {"job_id": f"job-{agent}", "agent": agent, "status": status, "elapsed_s": 0.5}
    job |= {"progress": {"percent": None, "message": None}, "cancel_requested": False, "result": None, "error": None}
    return {"type": "job", "epoch": epoch, "seq": seq, "project_id": "p", "agent": agent, "job": job}


def snapshot(seq: int = 0, epoch: str = "e1", agents: dict[str, Any] | None = None) -> dict[str, Any]:
    state = agents if agents is not None else {"quick": {"job": None, "last_result": None, "last_result_at": None}}
    return {"type": "snapshot", "project_id": "p", "epoch": epoch, "seq": seq, "recovered": False, "agents": state}


# -- the pure core ------------------------------------------------------------------------------


def test_the_tracker_keeps_the_cursor_and_drops_transitions_already_delivered() -> None:
    """A transition at or below the cursor, in the same epoch, is dropped; one from a new epoch is not."""
    tracker = Tracker()
    assert tracker.accept(snapshot(seq=3)) and tracker.cursor == Cursor("e1", 3)
    assert not tracker.accept(job_event(3)) and not tracker.accept(job_event(2))
    assert tracker.accept(job_event(4)) and tracker.cursor == Cursor("e1", 4)
    assert tracker.accept({"type": "progress", "seq": 4}) and tracker.cursor == Cursor("e1", 4)
    assert tracker.accept(job_event(1, epoch="e2")) and tracker.cursor == Cursor("e2", 1)
    assert not tracker.accept({"type": "pong"})


def test_backoff_grows_exponentially_to_a_cap_with_jitter() -> None:
    """Delays double up to the maximum; jitter only ever shortens a delay, by at most its fraction."""
    policy = Reconnect(initial=0.5, factor=2, maximum=5, jitter=0.5)
    assert [policy.delay(n, rand=lambda: 0.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.delay(2, rand=lambda: 1.0) == 1.0
    assert all(1.0 <= policy.delay(2) <= 2.0 for _ in range(100))
    assert policy.gives_up(60.0) and not policy.gives_up(59.9)
    assert not Reconnect(give_up_after=None).gives_up(1e9)


def test_sse_frames_parse_into_messages() -> None:
    """Data lines make a message at the blank line; comments, ids, events and retry add nothing."""
    parser = SseParser()
    lines = [
        "retry: 2000",
        "",
        "id: e1:3",
        "event: job",
        'data: {"type":"job",',
        'data: "seq":3}',
        "",
        ": keep-alive",
        "",
    ]
    assert [m for m in map(parser.feed, lines) if m] == [{"type": "job", "seq": 3}]


def test_long_poll_replies_look_like_a_stream() -> None:
    """A snapshot reply becomes a snapshot, a first resume a welcome, and repeated progress is dropped."""
    reader = PollReader("p")
    state = {"project_id": "p", "agents": {}, "server_time": "t"}
    progress = {"type": "progress", "job_id": "j", "seq": 1, "elapsed_s": 1.0, "percent": 5, "message": "m"}
    first = list(reader.messages({"epoch": "e1", "seq": 0, "reason": "no cursor", "snapshot": state, "events": []}))
    assert [m["type"] for m in first] == ["snapshot"] and first[0]["seq"] == 0
    second = list(reader.messages({"epoch": "e1", "seq": 1, "events": [job_event(1)], "progress": [progress]}))
    assert [m["type"] for m in second] == ["job", "progress"]
    assert list(reader.messages({"epoch": "e1", "seq": 1, "events": [], "progress": [progress]})) == []
    resumed = PollReader("p").messages({"epoch": "e1", "seq": 1, "recovered": True, "events": []})
    assert [m["type"] for m in resumed] == ["welcome"]


def test_endpoints_come_from_one_base_url() -> None:
    """http becomes ws and https wss, a path prefix is kept, ids are quoted, and only http(s) is accepted."""
    plain = Endpoint.parse("http://127.0.0.1:8000/")
    assert plain.ws("acme", None) == "ws://127.0.0.1:8000/ws/projects/acme"
    assert plain.ws("a/b", Cursor("e1", 7)) == "ws://127.0.0.1:8000/ws/projects/a%2Fb?epoch=e1&after=7"
    prefixed = Endpoint.parse("https://example.com/jobcast")
    assert prefixed.ws("acme", None) == "wss://example.com/jobcast/ws/projects/acme"
    assert prefixed.http(prefixed.project("acme", "/events")) == "https://example.com/jobcast/api/projects/acme/events"
    for bad in ("ftp://x", "127.0.0.1:8000", "http://", "http://x?a=1"):
        with pytest.raises(InvalidURL):
            Endpoint.parse(bad)


def test_the_url_comes_from_jobcast_url_or_the_default() -> None:
    """JOBCAST_URL, when set and not empty, is the server; otherwise http://127.0.0.1:8000."""
    assert server_url({"JOBCAST_URL": "http://jobs.example:9000"}) == "http://jobs.example:9000"
    assert server_url({"JOBCAST_URL": ""}) == server_url({}) == "http://127.0.0.1:8000"


def test_rendering_is_a_pure_function_of_state_and_event() -> None:
    """apply() folds events into rows; event_lines() prints a line per change and none for a repeat."""
    view = apply(View("p"), snapshot(), now=0.0)
    assert event_lines(View("p"), snapshot(), view, now=0.0) == ["quick        idle       no job yet"]
    running = apply(view, job_event(1), now=10.0)
    assert event_lines(view, job_event(1), running, now=10.0) == ["quick        running       -  0.5s"]
    step = {"type": "progress", "agent": "quick", "job_id": "job-quick", "elapsed_s": 1.0, "percent": 40.0}
    stepped = apply(running, step | {"message": "half\x1b[31mway"}, now=11.0)
    assert event_lines(running, step | {"message": "half\x1b[31mway"}, stepped, now=12.0) == [
        "quick        running     40%  2.0s  half [31mway"
    ]
    assert event_lines(stepped, step | {"message": "half\x1b[31mway", "elapsed_s": 1.5}, stepped, now=12.0) == []
    assert apply(stepped, step | {"job_id": "other"}, now=12.0) == stepped


def test_headlines_exit_codes_and_tables() -> None:
    """A summary is the headline, else simple key=value fields; the worst outcome sets the exit code."""
    assert headline({"summary": "Revenue is growing.", "x": 1}) == "Revenue is growing."
    assert (
        headline({"project": "acme", "series": [1, 2], "kpis": {"a": 1}}) == "project=acme series=[2 items] kpis={...}"
    )
    assert clean("a\nb\x1b[2Jc\x9b") == "a b [2Jc"
    assert for_statuses(["completed", "cancelled", "timed_out", "failed"]) == ExitCode.FAILED
    assert for_statuses(["completed", "cancelled", "timed_out"]) == ExitCode.TIMED_OUT
    assert for_statuses(["cancelled", "completed"]) == ExitCode.CANCELLED
    assert for_statuses(["completed"]) == for_statuses([]) == ExitCode.OK
    failed = job_event(2, status="failed")["job"] | {"error": {"code": "agent_error", "message": "ledger offline"}}
    assert job_line("quick", failed) == "quick        failed     0.5s  agent_error: ledger offline"
    project = {"project_id": "p", "agents": {"quick": {"job": failed, "last_result": {"summary": "ok"}}}}
    assert status_rows(project) == [("quick", "failed", "job-quic", "0.5s", "agent_error: ledger offline", "ok")]


def test_the_live_table_draws_a_row_per_agent() -> None:
    """The live display has each agent's state, bar, percent, elapsed time and step."""
    view = apply(apply(View("p"), snapshot(), 0.0), job_event(1), 0.0)
    view = apply(view, {"type": "progress", "agent": "quick", "job_id": "job-quick", "percent": 50.0,
                        "message": "halfway", "elapsed_s": 2.0}, 0.0)  # fmt: skip
    console = Console(width=100, record=True, force_terminal=True)
    console.print(live_table(view, now=1.0, caption="over ws"))
    text = console.export_text()
    assert "quick" in text and "running" in text and "50%" in text and "3.0s" in text and "halfway" in text
    assert "━" in text and "over ws" in text


LONG_HEADLINE = "Revenue is growing (+1.5% a month); the project burns 55,934 a month, and the runway lasts a year."


@pytest.mark.parametrize("width", [60, 80, 110])
def test_the_live_table_fits_the_terminal_without_cutting_names_or_states(width: int) -> None:
    """At 60, 80 and 110 columns every agent name and state is whole, and a long headline wraps below its row."""
    agents = {"financial": {"job": None}, "performance": {"job": None}}
    view = apply(View("p"), {"type": "snapshot", "agents": agents}, 0.0)
    running = {"job_id": "a", "agent": "financial", "status": "running", "elapsed_s": 2.0,
               "progress": {"percent": 50.0, "message": "asking the model"}}  # fmt: skip
    done = {"job_id": "b", "agent": "performance", "status": "completed", "elapsed_s": 20.0,
            "result": {"summary": LONG_HEADLINE}}  # fmt: skip
    for job in (running, done):
        view = apply(view, {"type": "job", "agent": job["agent"], "job": job}, 0.0)
    console = Console(width=width, record=True)
    console.print(live_table(view, now=0.0))
    lines = [line.rstrip() for line in console.export_text().splitlines()]
    assert all(len(line) <= width for line in lines) and "…" not in "".join(lines)
    assert lines[1].split()[:2] == ["financial", "running"] and lines[1].endswith("50%     2.0s")
    assert lines[2].strip() == "asking the model"
    assert lines[3].split()[:2] == ["performance", "completed"]
    assert " ".join(line.strip() for line in lines[4:]) == LONG_HEADLINE


def test_the_live_table_shows_an_ended_jobs_error_code_and_message() -> None:
    """A job that failed shows its error's code and message under its row."""
    failed = {"job_id": "a", "agent": "quick", "status": "failed", "elapsed_s": 1.0,
              "error": {"code": "interrupted", "message": "the server stopped before the job finished"}}  # fmt: skip
    view = apply(View("p"), {"type": "job", "agent": "quick", "job": failed}, 0.0)
    console = Console(width=80, record=True)
    console.print(live_table(view, now=0.0))
    assert "interrupted: the server stopped before the job finished" in console.export_text()


# -- the subscription's logic, on fake transports --------------------------------------------


def fake_transport(*scripts: list[Any]) -> Callable[[Connection], AsyncGenerator[dict[str, Any], None]]:
    """A transport that plays one script per connection: messages, then the error that ends it."""
    remaining = list(scripts)

    async def opener(conn: Connection) -> AsyncGenerator[dict[str, Any], None]:
        *messages, ending = remaining.pop(0)
        for message in messages:
            yield message
        raise ending

    return opener


@contextlib.asynccontextmanager
async def fake_subscription(
    monkeypatch: pytest.MonkeyPatch, transport: Transport = "auto", **openers: Any
) -> AsyncIterator[tuple[Subscription, list[str]]]:
    for name, opener in openers.items():
        monkeypatch.setitem(transports_module.OPENERS, name, opener)
    notes: list[str] = []
    async with subscribe(
        "http://127.0.0.1:9",
        "p",
        transport=transport,
        reconnect=TINY,
        on_retry=lambda error, delay: notes.append(f"retry {error}"),
        on_fallback=lambda error: notes.append(f"fallback {error}"),
    ) as events:
        yield events, notes


async def take(events: Subscription, count: int) -> list[dict[str, Any]]:
    taken: list[dict[str, Any]] = []
    with anyio.fail_after(WAIT):
        async for message in events:
            taken.append(message)
            if len(taken) == count:
                return taken
    return taken


@pytest.mark.anyio
async def test_a_replayed_transition_is_delivered_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a reconnect, transitions the caller already has are dropped by seq; the next one passes."""
    ws = fake_transport(
        [snapshot(1), job_event(2), StreamLost("ws", "dropped")],
        [{"type": "welcome", "epoch": "e1", "seq": 3}, job_event(2), job_event(3), StreamLost("ws", "end")],
    )
    async with fake_subscription(monkeypatch, "ws", ws=ws) as (events, notes):
        messages = await take(events, 4)
    assert [(m["type"], m.get("seq")) for m in messages] == [("snapshot", 1), ("job", 2), ("welcome", 3), ("job", 3)]
    assert notes == ["retry ws: dropped"]


@pytest.mark.anyio
async def test_auto_falls_back_in_order_and_keeps_the_transport_that_worked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused WebSocket and an unreachable SSE fall back to long-poll, which goes first on reconnect."""
    refused = TransportRefused("ws", ServerRefused("http_403", "blocked", 403))
    ws = fake_transport([refused])
    sse = fake_transport([ConnectFailed("sse", "timed out")])
    poll = fake_transport(
        [snapshot(1), StreamLost("poll", "reset")], [{"type": "welcome", "epoch": "e1", "seq": 1}, StreamLost("p", "x")]
    )
    async with fake_subscription(monkeypatch, ws=ws, sse=sse, poll=poll) as (events, notes):
        first = await take(events, 1)
        assert events.transport == "poll"
        second = await take(events, 1)
    assert first[0]["type"] == "snapshot" and second[0]["type"] == "welcome"
    assert notes == ["fallback ws: refused: blocked (http_403)", "fallback sse: timed out", "retry poll: reset"]


@pytest.mark.anyio
async def test_every_transport_refused_is_the_last_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the only transport is refused, subscribe raises the server's refusal, not a retry loop."""
    ws = fake_transport([TransportRefused("ws", ServerRefused("origin_not_allowed", "no", 403))])
    async with fake_subscription(monkeypatch, "ws", ws=ws) as (events, _):
        with pytest.raises(ServerRefused) as caught:
            await take(events, 1)
    assert caught.value.code == "origin_not_allowed" and caught.value.status == 403


@pytest.mark.anyio
async def test_giving_up_raises_server_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the stream opened, failures retry until give_up_after, then ServerUnreachable."""
    down = [ConnectFailed("ws", "connection refused")]
    ws = fake_transport([snapshot(0), StreamLost("ws", "gone")], *[down] * 1000)
    async with fake_subscription(monkeypatch, "ws", ws=ws) as (events, notes):
        events.reconnect = Reconnect(initial=0.001, maximum=0.001, give_up_after=0.05)
        with pytest.raises(ServerUnreachable, match="gave up after"):
            await take(events, 2)
    assert notes and all(note.startswith("retry ws: ") for note in notes)


# -- against a real server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobcastServer]:
    log = tmp_path_factory.mktemp("client") / "server.log"
    args = ["--store", "memory://", "--demo-seconds", "30", "--progress-interval", "0.1", *AGENTS]
    with jobcast_server(args, log) as running:
        yield running


async def until(events: Subscription, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Every message up to and including the first that satisfies ``predicate``."""
    seen: list[dict[str, Any]] = []
    with anyio.fail_after(WAIT):
        async for message in events:
            seen.append(message)
            if predicate(message):
                return seen
    raise AssertionError("the subscription ended")


def final(job_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == "job" and m["job"]["job_id"] == job_id and m["job"]["status"] == "completed"


def job_seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [m["seq"] for m in messages if m["type"] == "job"]


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_each_transport_delivers_the_snapshot_then_every_transition(
    server: JobcastServer, transport: Transport
) -> None:
    """Over WebSocket, SSE and long-poll alike: a snapshot, then queued, running, completed, in seq order."""
    project = f"each-{transport}"
    async with JobcastClient(server.url) as client, subscribe(server.url, project, transport=transport) as events:
        opening = await until(events, lambda m: m["type"] == "snapshot")
        assert events.transport == transport and opening[0]["seq"] == 0
        started = await client.start(project, "quick")
        seen = await until(events, final(started.job["job_id"]))
    statuses = [m["job"]["status"] for m in seen if m["type"] == "job"]
    assert statuses == ["queued", "running", "completed"] and job_seqs(seen) == [1, 2, 3]
    assert events.cursor is not None and events.cursor.after == 3


@pytest.mark.anyio
async def test_a_cursor_resumes_with_exactly_the_missed_transitions(server: JobcastServer) -> None:
    """Subscribing with an earlier cursor gets a welcome, then only the transitions after it."""
    async with JobcastClient(server.url) as client:
        started = await client.start("resume-cursor", "quick")
        async with subscribe(server.url, "resume-cursor") as events:
            await until(events, lambda m: m["type"] == "snapshot")
            current = await client.status("resume-cursor")
            if current["agents"]["quick"]["job"]["status"] != "completed":
                await until(events, final(started.job["job_id"]))
        cursor = Cursor(current["epoch"], 1)
        async with subscribe(server.url, "resume-cursor", cursor=cursor, transport="sse") as events:
            seen = await until(events, final(started.job["job_id"]))
    assert seen[0]["type"] == "welcome" and seen[0]["recovered"] is True and job_seqs(seen) == [2, 3]


@pytest.mark.anyio
async def test_the_http_actions_and_their_errors(server: JobcastServer) -> None:
    """start joins a running job, cancel stops it, and refusals carry the server's code, message and status."""
    async with JobcastClient(server.url) as client:
        first = await client.start("actions", "sleepy")
        again = await client.start("actions", "sleepy")
        assert not first.deduplicated and again.deduplicated and again.job["job_id"] == first.job["job_id"]
        cancelled = await client.cancel("actions", "sleepy")
        assert cancelled["job_id"] == first.job["job_id"] and cancelled["cancel_requested"] is True
        status = await client.status("actions")
        assert set(status["agents"]) == {"quick", "sleepy", "failing"} and status["epoch"]
        assert [agent["name"] for agent in await client.agents()] == ["quick", "sleepy", "failing"]
        with pytest.raises(ServerRefused) as unknown:
            await client.start("actions", "legal")
        assert (unknown.value.code, unknown.value.status) == ("unknown_agent", 404)
        assert "legal" in unknown.value.message
        with pytest.raises(ServerRefused) as invalid:
            await client.status("bad!id")
        assert (invalid.value.code, invalid.value.status) == ("invalid_project_id", 400)


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_a_bad_project_id_is_refused_on_every_transport(server: JobcastServer, transport: Transport) -> None:
    """The server's 400 is raised as ServerRefused, without retrying or falling back."""
    async with subscribe(server.url, "bad!id", transport=transport, reconnect=TINY) as events:
        with pytest.raises(ServerRefused) as caught:
            await take(events, 1)
    assert caught.value.code == "invalid_project_id" and caught.value.status == 400


@pytest.mark.anyio
async def test_auto_falls_back_to_sse_when_the_server_refuses_the_websocket(server: JobcastServer) -> None:
    """A real refusal: the server answers 403 to a WebSocket from a foreign Origin, so auto uses SSE."""
    # The CLI never sends an Origin; the ``origin`` option is how a program (or this test)
    # presents one, as a browser would. Forcing ``ws`` with that origin raises the refusal.
    fallbacks: list[TransportError] = []
    origin = "https://evil.example"
    async with subscribe(server.url, "fallback", origin=origin, on_fallback=fallbacks.append) as events:
        await until(events, lambda m: m["type"] == "snapshot")
        assert events.transport == "sse"
        async with JobcastClient(server.url) as client:
            started = await client.start("fallback", "quick")
        await until(events, final(started.job["job_id"]))
    assert [(f.transport, type(f).__name__) for f in fallbacks] == [("ws", "TransportRefused")]
    async with subscribe(server.url, "fallback", transport="ws", origin=origin) as events:
        with pytest.raises(ServerRefused) as caught:
            await take(events, 1)
    assert (caught.value.code, caught.value.status) == ("origin_not_allowed", 403)


@pytest.mark.anyio
async def test_an_unreachable_server_fails_at_once_unless_asked_to_retry() -> None:
    """A first connection that fails on every transport raises ServerUnreachable; retry_first retries, then gives up."""
    url = f"http://127.0.0.1:{free_port()}"
    async with subscribe(url, "p") as events:
        with pytest.raises(ServerUnreachable, match="connection refused"):
            await take(events, 1)
    retries: list[float] = []
    policy = Reconnect(initial=0.01, maximum=0.02, give_up_after=0.2, retry_first=True)
    async with subscribe(url, "p", reconnect=policy, on_retry=lambda e, d: retries.append(d)) as events:
        with pytest.raises(ServerUnreachable, match="gave up"):
            await take(events, 1)
    assert retries and all(0 < delay <= 0.02 for delay in retries)
    async with JobcastClient(url) as client:
        with pytest.raises(ServerUnreachable, match="connection refused"):
            await client.status("p")


@pytest.mark.anyio
@pytest.mark.timeout(90)
@pytest.mark.parametrize(("transport", "stop"), [("ws", "stop"), ("sse", "kill")])
async def test_resume_after_the_server_closes_the_stream_mid_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: Transport, stop: str
) -> None:
    """The server stops or dies mid-job and comes back: the subscription resumes, every transition once, in order."""
    # SIGTERM closes WebSockets with 1012; SIGKILL just drops the socket. SSE is paired with
    # SIGKILL because this server, on SIGTERM, waits for open event streams to end.
    port = free_port()
    monkeypatch.setattr(servers, "free_port", lambda: port)
    args = ["--store", f"sqlite:///{tmp_path / 'jobs.db'}", "--demo-seconds", "30", *AGENTS]
    retries: list[str] = []
    first = JobcastServer(args, tmp_path / "server.log")
    second: JobcastServer | None = None
    try:
        await anyio.to_thread.run_sync(first.wait_ready)
        hook = lambda error, delay: retries.append(str(error))  # noqa: E731
        async with subscribe(first.url, "resume", transport=transport, reconnect=TINY, on_retry=hook) as events:
            await until(events, lambda m: m["type"] == "snapshot")
            async with JobcastClient(first.url) as client:
                sleepy = (await client.start("resume", "sleepy")).job["job_id"]
            seen = await until(events, lambda m: m["type"] == "job" and m["job"]["status"] == "running")
            await anyio.to_thread.run_sync(getattr(first, stop))
            second = JobcastServer(args, tmp_path / "server.log")
            await anyio.to_thread.run_sync(second.wait_ready)
            seen += await until(events, lambda m: m["type"] in ("welcome", "snapshot"))
            async with JobcastClient(second.url) as client:
                quick = (await client.start("resume", "quick")).job["job_id"]
            seen += await until(events, final(quick))
    finally:
        for process in (first, second):
            if process is not None:
                await anyio.to_thread.run_sync(process.stop)
    assert retries, "the subscription never lost its stream"
    opening = [m for m in seen if m["type"] in ("welcome", "snapshot")]
    assert opening[-1]["type"] == "welcome" and opening[-1]["recovered"] is True
    assert job_seqs(seen) == list(range(1, len(job_seqs(seen)) + 1))
    lost = [m["job"] for m in seen if m["type"] == "job" and m["job"]["job_id"] == sleepy]
    assert [job["status"] for job in lost] == ["queued", "running", "failed"]
    assert lost[-1]["error"]["code"] == "interrupted"
