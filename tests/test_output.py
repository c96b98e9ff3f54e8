"""Streamed output: exact on every transport, for every moment a subscriber joins, across processes.

The agent streams 2,000 pieces (10,000 characters, some not ASCII), stopping halfway
until the test lets it go on, so "joined in the middle" is a fact, not a timing.
Subscribers are the real client library (``jobcast.client.subscribe``) on each transport.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import httpx
import pytest

from jobcast.client import Cursor, Outputs, subscribe
from tests.agents import STREAMED_TEXT, StreamingAgent
from tests.live import Live, live_server
from tests.redis_server import RedisServer
from tests.servers import jobcast_server
from tests.support import WAIT, eventually, eventually_async

pytestmark = pytest.mark.anyio

TRANSPORTS = ["ws", "sse", "poll"]
AGENTS = ["tests.agents:StreamingAgent", "tests.agents:BigAgent"]


async def follow(
    url: str,
    project: str,
    transport: str,
    *,
    cursor: Cursor | None = None,
    until: Callable[[str], bool] | None = None,
    streaming: anyio.Event | None = None,
) -> tuple[str, dict[str, Any] | None, Cursor | None]:
    """Follow the project with the client library; apply output by offset until the streaming job completes
    (or ``until`` the text so far says stop). The text, the final job record, and the cursor.
    ``streaming`` is set at the first output received: the subscriber is in the stream."""
    outputs = Outputs()
    job_id: str | None = None
    async with subscribe(url, project, transport=transport, cursor=cursor, poll_wait=2) as events:  # type: ignore[arg-type]
        with anyio.fail_after(WAIT * 2):
            async for message in events:
                outputs.apply(message)  # output by offset, and a final record's whole output
                if message["type"] == "output":
                    job_id = message["job_id"]
                    if streaming is not None:
                        streaming.set()
                    if until is not None and until(outputs.text(job_id)):
                        return outputs.text(job_id), None, events.cursor
                completed = message["type"] == "job" and message["job"]["status"] == "completed"
                if completed and message["agent"] == "streaming":
                    return outputs.text(message["job"]["job_id"]), message["job"], events.cursor
    raise AssertionError("the subscription ended before the job completed")


async def halfway() -> None:
    assert await anyio.to_thread.run_sync(StreamingAgent.halfway.wait, WAIT)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_every_subscriber_ends_with_exactly_the_agents_text(transport: str, store_url: str) -> None:
    """Joined before the start, joined in the middle, or dropped and resumed mid-stream: the same text."""
    async with live_server(agents=AGENTS, store=store_url) as live:
        results: dict[str, tuple[str, dict[str, Any] | None, Cursor | None]] = {}
        joined = {name: anyio.Event() for name in ("early", "resumed", "middle")}

        async def early() -> None:
            results["early"] = await follow(live.url, "s", transport, streaming=joined["early"])

        async def dropped_and_resumed() -> None:
            _, _, cursor = await follow(live.url, "s", transport, until=lambda text: len(text) > 100)
            await halfway()
            results["resumed"] = await follow(live.url, "s", transport, cursor=cursor, streaming=joined["resumed"])

        async def joined_in_the_middle() -> None:
            await halfway()
            results["middle"] = await follow(live.url, "s", transport, streaming=joined["middle"])

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(early)
            tasks.start_soon(dropped_and_resumed)
            await eventually_async(lambda: live.hub.subscriber_count + live.hub.waiting_polls >= 2)
            job = await live.start("s", "streaming")
            await halfway()
            tasks.start_soon(joined_in_the_middle)
            for event in joined.values():  # each has the output so far, while the job still streams
                with anyio.fail_after(WAIT):
                    await event.wait()
            StreamingAgent.gate.set()
        record = (await live.http.get(f"/api/jobs/{job['job_id']}")).json()
    assert record["output"] == STREAMED_TEXT and record["output_truncated"] is False
    for name, (text, final, _) in results.items():
        assert text == STREAMED_TEXT, f"{name}: {len(text)} characters, {_first_difference(text)}"
        assert final is not None and final["output"] is None  # the event does not repeat what streamed


def _first_difference(text: str) -> str:
    index = next((i for i, (a, b) in enumerate(zip(text, STREAMED_TEXT, strict=False)) if a != b), len(text))
    return f"first difference at {index}: {text[index : index + 20]!r} != {STREAMED_TEXT[index : index + 20]!r}"


async def test_a_running_job_record_has_its_output_so_far() -> None:
    async with live_server(agents=AGENTS) as live:
        job = await live.start("s", "streaming")
        await halfway()

        async def all_before_the_halfway_stop() -> dict[str, Any] | None:  # stored within one ~50 ms window
            record: dict[str, Any] = (await live.http.get(f"/api/jobs/{job['job_id']}")).json()
            return record if len(record["output"] or "") == 1000 * 6 else None

        so_far = await eventually_async(all_before_the_halfway_stop)
        assert so_far["status"] == "running" and so_far["output"] == STREAMED_TEXT[: 1000 * 6]
        StreamingAgent.gate.set()


async def test_output_past_max_output_bytes_is_cut_and_the_agent_is_not_disturbed() -> None:
    async with live_server(agents=AGENTS, max_output_bytes=1000) as live:
        StreamingAgent.gate.set()
        job = await live.start("s", "streaming")
        final = await eventually_async(lambda: _final(live, job["job_id"]))
    assert final["status"] == "completed" and final["result"] == {"pieces": 2000}
    assert final["output_truncated"] is True
    assert final["output"] == STREAMED_TEXT[: len(final["output"])] and len(final["output"].encode()) <= 1000
    assert len(final["output"].encode()) > 990  # cut at the bound, at a whole character


async def _final(live: Live, job_id: str) -> dict[str, Any] | None:
    record: dict[str, Any] = (await live.http.get(f"/api/jobs/{job_id}")).json()
    return record if record["status"] not in ("queued", "running") else None


async def test_a_subscriber_that_never_reads_is_closed_and_resumes_with_the_exact_text() -> None:
    from tests.test_push import raw_websocket

    async with live_server(agents=AGENTS, send_buffer=4, max_output_bytes=8 * 1024 * 1024) as live:
        slow = await anyio.to_thread.run_sync(raw_websocket, live.port, "s", 4096)
        try:
            await live.wait_until(lambda: live.hub.subscriber_count == 1)
            job = await live.start("s", "streaming")
            await halfway()
            for _ in range(20):  # big results: transitions that pile up behind a full socket
                big = await live.start("s", "big")
                await eventually_async(lambda big=big: _final(live, big["job_id"]))
            await live.wait_until(lambda: live.hub.subscriber_count == 0)  # closed for falling behind
            StreamingAgent.gate.set()
        finally:
            slow.close()
        text, final, _ = await follow(live.url, "s", "ws", cursor=Cursor(live.engine.store.epoch, 0))
    assert final is not None and final["job_id"] == job["job_id"]
    assert text == STREAMED_TEXT


# -- across processes, on Redis --------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_subscriber_on_one_process_gets_the_exact_output_of_a_job_on_another(
    transport: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"JOBCAST_TEST_GATES": str(tmp_path)}
    args = ["--store", redis_server.url(), "--agent", "tests.agents:StreamingAgent"]
    with (
        jobcast_server([*args, "--threads", "0"], tmp_path / "a.log", env) as watched,
        jobcast_server([*args, "--threads", "1"], tmp_path / "b.log", env) as runner,
    ):
        results: dict[str, tuple[str, dict[str, Any] | None, Cursor | None]] = {}
        joined = {name: anyio.Event() for name in ("early", "middle")}

        async def early() -> None:
            results["early"] = await follow(watched.url, "x", transport, streaming=joined["early"])

        async def middle() -> None:
            results["middle"] = await follow(watched.url, "x", transport, streaming=joined["middle"])

        async with anyio.create_task_group() as tasks, httpx.AsyncClient() as http:
            tasks.start_soon(early)
            await anyio.to_thread.run_sync(lambda: eventually(lambda: _polled(watched, 1)))
            reply = await http.post(f"{watched.url}/api/projects/x/agents/streaming/refresh")
            job = reply.json()["job"]
            await anyio.to_thread.run_sync(eventually, (tmp_path / "halfway-x").exists)
            tasks.start_soon(middle)
            for event in joined.values():
                with anyio.fail_after(WAIT):
                    await event.wait()
            (tmp_path / "x").touch()
        async with httpx.AsyncClient() as http:
            record = (await http.get(f"{watched.url}/api/jobs/{job['job_id']}")).json()
    assert record["runner"]["pid"] == runner.process.pid
    for name, (text, _, _) in results.items():
        assert text == STREAMED_TEXT, f"{name}: {_first_difference(text)}"


def _polled(server: Any, count: int) -> bool:
    health = httpx.get(f"{server.url}/healthz").json()
    return bool(health["subscribers"] + health["waiting_polls"] >= count)


async def test_a_bad_output_cursor_on_the_long_poll_is_a_clear_error() -> None:
    async with live_server(agents=AGENTS) as live:
        reply = await live.http.get("/api/projects/s/events", params={"output": "nope", "wait": 0})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_output"


def test_output_messages_are_one_json_object_per_window() -> None:
    from jobcast.server.jobs import OutputChunk
    from jobcast.server.wire import output_message

    chunk = OutputChunk(project_id="p", agent="a", job_id="j", attempt=1, offset=5, text="é\n")
    assert json.loads(output_message(chunk).text) == {
        "type": "output", "project_id": "p", "agent": "a", "job_id": "j", "attempt": 1, "offset": 5, "text": "é\n",
    }  # fmt: skip
