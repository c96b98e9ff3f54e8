"""Push against a real uvicorn server: WebSocket, SSE and long-poll on one cursor."""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
import websockets

from jobcast.server.wire import Message
from tests.agents import GatedAgent, StubbornAgent
from tests.live import Live, live_server
from tests.support import WAIT, receive, receive_until

pytestmark = pytest.mark.anyio


def is_final(message: dict[str, Any]) -> bool:
    return message["type"] == "job" and message["job"]["status"] in ("completed", "failed", "cancelled", "timed_out")


def transitions(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "job"]


async def run_quick_jobs(live: Live, project_id: str, count: int) -> None:
    """Run ``count`` quick jobs one after another: 3 events each."""
    for _ in range(count):
        job = await live.start(project_id, "quick")
        await wait_final(live, job["job_id"])


async def wait_final(live: Live, job_id: str) -> None:
    store = live.engine.store
    with anyio.fail_after(WAIT):
        while (job := await store.get_job(job_id)) is not None and job.status.is_active:
            await store.wait_for_events(job.project_id, await store.last_seq(job.project_id), WAIT)


# -- transports behind one interface, so the recovery table runs over all three ---------------


async def sse_messages(live: Live, project_id: str, last_event_id: str | None) -> AsyncIterator[dict[str, Any]]:
    # Bytes: httpx would refuse to send a non-ASCII cursor as text, and a client may send one.
    headers = {"Last-Event-ID": last_event_id.encode()} if last_event_id else {}
    async with live.http.stream("GET", f"/api/projects/{project_id}/events/stream", headers=headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                yield json.loads(line[len("data: ") :])


async def opening_over(transport: str, live: Live, project_id: str, epoch: str, after: str) -> list[dict[str, Any]]:
    """The first message and any replayed events, over one transport, up to the log's end (seq 9)."""

    def done(message: dict[str, Any]) -> bool:
        return (
            message["type"] == "snapshot"
            or (message["type"] == "welcome" and message["seq"] == int_or(after))
            or (message["type"] == "job" and message["seq"] == 9)
        )

    if transport == "ws":
        async with live.ws(project_id, query={"epoch": epoch, "after": after}) as ws:
            return await receive_until(ws, done)
    if transport == "sse":
        seen = []
        with anyio.fail_after(WAIT):
            async for message in sse_messages(live, project_id, f"{epoch}:{after}"):
                seen.append(message)
                if done(message):
                    return seen
        raise AssertionError("stream ended")
    params = {"epoch": epoch, "after": after, "wait": 0}
    reply = (await live.http.get(f"/api/projects/{project_id}/events", params=params)).json()
    if not reply["recovered"]:
        return [{"type": "snapshot", **reply}]
    return [{"type": "welcome", **reply}, *reply["events"]]


def int_or(text: str) -> int | None:
    return int(text) if re.fullmatch("[0-9]+", text) else None


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
@pytest.mark.parametrize(
    ("case", "after", "epoch_ok", "replayed"),
    [
        ("from a position", "7", True, [8, 9]),
        ("the same position", "9", True, []),
        ("too far back", "2", True, None),
        ("a future seq", "50", True, None),
        ("the wrong epoch", "7", False, None),
        ("a malformed cursor", "x7", True, None),
        ("a superscript digit", "²", True, None),
    ],
)
async def test_the_recovery_table(
    transport: str, case: str, after: str, epoch_ok: bool, replayed: list[int] | None
) -> None:
    """Each cursor case gets an exact replay or an honest snapshot, over every transport."""
    async with live_server(history=3) as live:
        await run_quick_jobs(live, "p1", 3)  # seqs 1..9
        epoch = live.engine.store.epoch if epoch_ok else "not-the-epoch"
        opening = await opening_over(transport, live, "p1", epoch, after)
        first = opening[0]
        if replayed is None:
            assert first["type"] == "snapshot" and first["recovered"] is False and first["seq"] == 9
            assert first["epoch"] == live.engine.store.epoch
            assert len(opening) == 1
        else:
            assert first["type"] == "welcome" and first["recovered"] is True
            assert [m["seq"] for m in transitions(opening)] == replayed


async def test_a_snapshot_has_the_project_status_shape() -> None:
    """Without a cursor the socket opens with a snapshot whose agents match GET /api/projects/{id}."""
    async with live_server() as live:
        await run_quick_jobs(live, "p1", 1)
        async with live.ws("p1") as ws:
            snapshot = await receive(ws)
        status = (await live.http.get("/api/projects/p1")).json()
        assert snapshot["type"] == "snapshot" and snapshot["recovered"] is False
        assert snapshot["seq"] == status["seq"] == 3 and snapshot["agents"] == status["agents"]
        assert snapshot["project_id"] == "p1" and snapshot["server_time"]


async def test_transitions_arrive_in_order_exactly_once() -> None:
    """One client sees consecutive seqs, each job queued, running, then final, and nothing after."""
    async with live_server() as live, live.ws("p1") as ws:
        assert (await receive(ws))["type"] == "snapshot"
        await run_quick_jobs(live, "p1", 4)
        seen = await receive_until(ws, lambda m: m["type"] == "job" and m["seq"] == 12)
        jobs = transitions(seen)
        assert [m["seq"] for m in jobs] == list(range(1, 13))
        assert [m["job"]["status"] for m in jobs] == ["queued", "running", "completed"] * 4
        await ws.send(json.dumps({"type": "ping"}))
        assert (await receive_until(ws, lambda m: m["type"] == "pong"))[-1] == {"type": "pong"}


async def test_a_compressed_socket_gets_every_message_too() -> None:
    """With --ws-compression a socket that negotiates permessage-deflate is written frame by frame, compressed,
    where others get the frames built once: the same messages, transitions and batched progress alike."""
    async with live_server(ws_compression=True, progress_interval=0.05) as live, live.ws("p1") as ws:
        assert ws.response is not None and "permessage-deflate" in ws.response.headers["sec-websocket-extensions"]
        assert (await receive(ws))["type"] == "snapshot"
        await live.start("p1", "gated")
        await receive_until(ws, lambda m: m["type"] == "progress" and m["elapsed_s"] > 0.1)
        GatedAgent.gate.set()
        seen = await receive_until(ws, is_final)
        await run_quick_jobs(live, "p1", 2)
        seen += await receive_until(ws, lambda m: m["type"] == "job" and m["seq"] == 9)
        assert [m["seq"] for m in transitions(seen)][-7:] == list(range(3, 10))


async def test_progress_ticks_and_reports_reach_subscribers() -> None:
    """A running job sends progress on each report and every interval, with its transition's seq."""
    async with live_server(progress_interval=0.05) as live, live.ws("p1") as ws:
        await receive(ws)
        await live.start("p1", "gated")
        seen = await receive_until(ws, lambda m: m["type"] == "progress" and m["elapsed_s"] > 0.1)
        running = next(m for m in seen if m["type"] == "job" and m["job"]["status"] == "running")
        progress = [m for m in seen if m["type"] == "progress"]
        assert len(progress) >= 2  # the report, then ticks with no report
        assert all(m["seq"] == running["seq"] and m["job_id"] == running["job"]["job_id"] for m in progress)
        assert progress[0]["percent"] == 50 and progress[0]["message"] == "waiting at the gate"
        assert set(progress[0]) == {
            "type", "project_id", "agent", "job_id", "elapsed_s", "percent", "message", "seq",
            "expected_s", "eta_s", "overdue",
        }  # fmt: skip
        assert (progress[0]["expected_s"], progress[0]["eta_s"], progress[0]["overdue"]) == (None, None, False)
        GatedAgent.gate.set()
        await receive_until(ws, is_final)


async def test_a_new_subscriber_gets_the_latest_progress_of_running_jobs() -> None:
    """After a snapshot, each running job's latest progress follows at once."""
    async with live_server(progress_interval=30) as live:
        job = await live.start("p1", "gated")
        async with live.ws("p1") as watcher:
            await receive(watcher)
            await receive_until(watcher, lambda m: m["type"] == "progress")
        async with live.ws("p1") as ws:
            snapshot = await receive(ws)
            assert snapshot["agents"]["gated"]["job"]["status"] == "running"
            progress = await receive(ws)
            assert progress["type"] == "progress" and progress["job_id"] == job["job_id"]
        GatedAgent.gate.set()


async def test_agent_reports_are_coalesced() -> None:
    """300 reports in a burst become at most about ten progress events a second."""
    async with live_server(progress_interval=30) as live, live.ws("p1") as ws:
        await receive(ws)
        await live.start("p1", "chatty")
        seen = await receive_until(ws, is_final)
        progress = [m for m in seen if m["type"] == "progress"]
        running_for = transitions(seen)[-1]["job"]["elapsed_s"]
        assert 1 <= len(progress) <= running_for * 10 + 2
        assert len(progress) < 300


async def test_nothing_follows_a_final_state() -> None:
    """A timed-out job's late result and reports never reach subscribers."""
    async with live_server(progress_interval=0.05) as live, live.ws("p1") as ws:
        await receive(ws)
        job = await live.start("p1", "stubborn")
        seen = await receive_until(ws, is_final)
        assert seen[-1]["job"]["status"] == "timed_out"
        StubbornAgent.gate.set()
        assert await anyio.to_thread.run_sync(StubbornAgent.returned.wait, WAIT)
        await live.wait_until(lambda: live.engine.busy_threads == 0)
        await run_quick_jobs(live, "p1", 1)  # a marker: everything before it has been sent
        after = await receive_until(ws, lambda m: m["type"] == "job" and m["agent"] == "quick" and is_final(m))
        assert not [
            m for m in after if m.get("job_id") == job["job_id"] or m.get("job", {}).get("job_id") == job["job_id"]
        ]


async def test_switching_transports_mid_job_loses_and_repeats_nothing() -> None:
    """WebSocket, then SSE, then long-poll, each resuming from the last cursor, see each transition once."""
    async with live_server() as live:
        got: list[dict[str, Any]] = []
        async with live.ws("p1") as ws:
            snapshot = await receive(ws)
            job = await live.start("p1", "gated")
            got += transitions(
                await receive_until(ws, lambda m: m["type"] == "job" and m["job"]["status"] == "running")
            )
        epoch = snapshot["epoch"]
        await live.http.post("/api/projects/p1/agents/gated/cancel")  # seq 3, while nobody listens
        with anyio.fail_after(WAIT):
            async for message in sse_messages(live, "p1", f"{epoch}:{got[-1]['seq']}"):
                if message["type"] == "job":
                    got.append(message)
                    break
        await wait_final(live, job["job_id"])
        reply = (
            await live.http.get("/api/projects/p1/events", params={"epoch": epoch, "after": got[-1]["seq"]})
        ).json()
        got += reply["events"]
        assert [m["seq"] for m in got] == [1, 2, 3, 4]
        assert [(m["job"]["status"], m["job"]["cancel_requested"]) for m in got] == [
            ("queued", False),
            ("running", False),
            ("running", True),
            ("cancelled", True),
        ]


async def test_long_poll_waits_for_the_next_event() -> None:
    """With nothing after the cursor, long-poll returns as soon as the next event lands."""
    async with live_server() as live:
        await run_quick_jobs(live, "p1", 1)
        epoch = live.engine.store.epoch
        async with anyio.create_task_group() as tasks:
            replies: list[dict[str, Any]] = []

            async def poll() -> None:
                params = {"epoch": epoch, "after": 3, "wait": 30}
                replies.append((await live.http.get("/api/projects/p1/events", params=params, timeout=WAIT)).json())

            tasks.start_soon(poll)
            await anyio.wait_all_tasks_blocked()
            await live.start("p1", "gated")
        assert replies[0]["recovered"] is True and [e["seq"] for e in replies[0]["events"]][0] == 4
        empty = (await live.http.get("/api/projects/p1/events", params={"epoch": epoch, "after": 99, "wait": 0})).json()
        assert empty["recovered"] is False and empty["snapshot"]["agents"]["gated"]["job"]
        GatedAgent.gate.set()


@pytest.mark.parametrize("wait", ["31", "-1", "soon", "²", "١"])
async def test_long_poll_rejects_a_bad_wait(wait: str) -> None:
    """wait must be a whole number of seconds from 0 to 30."""
    async with live_server() as live:
        response = await live.http.get("/api/projects/p1/events", params={"wait": wait})
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_wait"


async def test_two_hundred_subscribers_see_every_transition_in_order() -> None:
    """200 concurrent sockets on one project each get all transitions, in order."""
    async with live_server() as live:
        results: list[list[int]] = []

        async def subscriber(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            async with live.ws("p1") as ws:
                await receive(ws)
                task_status.started()
                seen = await receive_until(ws, lambda m: m["type"] == "job" and m["seq"] == 9)
                results.append([m["seq"] for m in transitions(seen)])

        async with anyio.create_task_group() as tasks:
            for _ in range(200):
                await tasks.start(subscriber)
            await run_quick_jobs(live, "p1", 3)
        assert len(results) == 200
        assert all(seqs == list(range(1, 10)) for seqs in results)


def raw_websocket(port: int, project_id: str, receive_buffer: int | None = None) -> socket.socket:
    """A client that completes the handshake and then never reads or answers a ping."""
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        (
            f"GET /ws/projects/{project_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    return sock


async def test_a_slow_consumer_is_closed_without_hurting_anyone() -> None:
    """A client that never reads is dropped; others and the jobs are unaffected; a resume recovers all."""
    async with live_server(send_buffer=4) as live, live.ws("p1", max_size=None, max_queue=None) as healthy:
        await receive(healthy)
        slow = await anyio.to_thread.run_sync(raw_websocket, live.port, "p1", 4096)
        try:
            await live.wait_until(lambda: live.hub.subscriber_count == 2)
            for _ in range(40):  # about 10 MB of results, far past any socket buffer
                job = await live.start("p1", "big")
                await wait_final(live, job["job_id"])
            await live.wait_until(lambda: live.hub.subscriber_count == 1)
            seen = await receive_until(healthy, lambda m: m["type"] == "job" and m["seq"] == 120)
            assert [m["seq"] for m in transitions(seen)] == list(range(1, 121))
        finally:
            slow.close()
        epoch = live.engine.store.epoch
        async with live.ws("p1", query={"epoch": epoch, "after": 0}, max_size=None) as resumed:
            replay = await receive_until(resumed, lambda m: m["type"] == "job" and m["seq"] == 120)
            assert [m["seq"] for m in transitions(replay)] == list(range(1, 121))


async def test_a_dead_peer_is_dropped_within_the_ping_timeout() -> None:
    """A peer that stops answering pings is dropped and its subscription removed."""
    async with live_server(ping_interval=0.2, ping_timeout=0.2) as live:
        dead = await anyio.to_thread.run_sync(raw_websocket, live.port, "p1")
        try:
            await live.wait_until(lambda: live.hub.subscriber_count == 1)
            await live.wait_until(lambda: live.hub.subscriber_count == 0)
        finally:
            dead.close()


async def test_a_client_leaving_mid_job_leaves_no_trace(caplog: pytest.LogCaptureFixture) -> None:
    """The job completes after its only subscriber disconnects, and nothing is logged as an error."""
    caplog.set_level(logging.WARNING)
    async with live_server() as live:
        async with live.ws("p1") as ws:
            await receive(ws)
            job = await live.start("p1", "gated")
            await receive_until(ws, lambda m: m["type"] == "progress")
        await live.wait_until(lambda: live.hub.subscriber_count == 0)
        GatedAgent.gate.set()
        await wait_final(live, job["job_id"])
        assert (await live.engine.store.get_job(job["job_id"])).status.value == "completed"  # type: ignore[union-attr]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", "bad_json"),
        ("[]", "bad_message"),
        ('{"no": "type"}', "missing_type"),
        ('{"type": "x"}', "unknown_type"),
        ("[" * 60_000, "bad_json"),  # deeper than the JSON parser's recursion limit, yet under 64 KiB
    ],
)
async def test_bad_client_messages_get_an_error_and_the_socket_stays_open(text: str, code: str) -> None:
    """Each bad message is answered with a coded error; a ping afterwards still gets a pong."""
    async with live_server() as live, live.ws("p1") as ws:
        await receive(ws)
        await ws.send(text)
        error = await receive(ws)
        assert error["type"] == "error" and error["code"] == code and error["message"]
        await ws.send('{"type": "ping"}')
        assert await receive(ws) == {"type": "pong"}


@pytest.mark.parametrize(("payload", "close_code"), [(b"\x00binary", 1003), ("x" * (64 * 1024 + 1), 1009)])
async def test_binary_and_oversized_messages_close_the_socket(payload: Any, close_code: int) -> None:
    """A binary frame closes with 1003; a message over 64 KiB closes with 1009."""
    async with live_server() as live, live.ws("p1", max_size=None) as ws:
        await receive(ws)
        await ws.send(payload)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await receive(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == close_code


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),
        ("own", True),
        ("https://dash.example", True),
        ("null", False),
        ("http://127.0.0.1:1", False),
        ("https://own", False),
        ("https://dash.example.evil.com", False),
    ],
)
async def test_origins_are_checked_at_the_handshake(origin: str | None, allowed: bool) -> None:
    """A browser origin must be the server's own or listed exactly; refusals are 403."""
    async with live_server(allowed_origins=("https://dash.example",)) as live:
        own = f"127.0.0.1:{live.port}"
        value = {"own": f"http://{own}", "https://own": f"https://{own}"}.get(origin or "", origin)
        headers = {} if value is None else {"Origin": value}
        if allowed:
            async with live.ws("p1", additional_headers=headers) as ws:
                assert (await receive(ws))["type"] == "snapshot"
        else:
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with live.ws("p1", additional_headers=headers):
                    pass
            assert refused.value.response.status_code == 403
            assert json.loads(refused.value.response.body)["error"]["code"] == "origin_not_allowed"


async def test_an_invalid_project_id_is_refused_at_the_handshake() -> None:
    """A bad project id gets a 400 with a JSON error; a project with no jobs gets an empty snapshot."""
    async with live_server() as live:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with live.ws("-bad"):
                pass
        assert refused.value.response.status_code == 400
        assert json.loads(refused.value.response.body)["error"]["code"] == "invalid_project_id"
        async with live.ws("never-used") as ws:
            snapshot = await receive(ws)
            assert snapshot["seq"] == 0 and all(a["job"] is None for a in snapshot["agents"].values())


async def test_sse_sends_keep_alive_comments_when_idle() -> None:
    """An idle SSE stream gets comment lines so proxies keep it open."""
    async with live_server(sse_keepalive=0.05) as live:
        async with live.http.stream("GET", "/api/projects/p1/events/stream") as response:
            lines: list[str] = []
            with anyio.fail_after(WAIT):
                async for line in response.aiter_lines():
                    lines.append(line)
                    if line.startswith(": keep-alive"):
                        break
        assert any(line.startswith("event: snapshot") for line in lines)


async def test_sse_rejects_a_bad_project_with_json() -> None:
    """The SSE route validates like every other: 400 JSON before any stream starts."""
    async with live_server() as live:
        response = await live.http.get("/api/projects/-bad/events/stream")
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_project_id"


__all__ = ["httpx"]


async def test_an_overflowing_subscriber_is_closed_with_1013(caplog: pytest.LogCaptureFixture) -> None:
    """When a subscriber's queue overflows, its socket is closed with 1013 (try again later), and one line says so."""
    async with live_server(send_buffer=2) as live, live.ws("p1") as ws:
        await receive(ws)
        [subscription] = live.hub._channels["p1"].subscribers
        subscription.writer = lambda data: False  # as if its socket were full
        for seq in range(1, 5):  # one burst, before any drainer can run
            subscription.push_event(seq, Message("job", "{}", f"e:{seq}"), "job", final=False)
        assert subscription.overflowed.is_set()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await receive(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert closed.value.rcvd.reason == "too far behind; resume from your cursor"
    [line] = [r.getMessage() for r in caplog.records if "too far behind" in r.getMessage()]
    assert line.startswith("closing WebSocket /ws/projects/p1 from 127.0.0.1:") and "(2 transitions queued)" in line
