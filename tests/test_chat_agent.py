"""ChatAgent against a fake OpenAI-compatible server (tests/fake_llm.py): real HTTP, real SSE framing."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import pytest

from jobcast.agents import ChatAgent
from jobcast.agents.chat import LLMRefused
from tests.fake_llm import PIECES, fake_llm
from tests.live import Live, live_server
from tests.support import WAIT, eventually_async

pytestmark = pytest.mark.anyio

KEY = "sk-test-0123456789abcdef"


class Recorder:
    """The ctx an agent gets, recording what it streams and reports (for calling an agent directly)."""

    def __init__(self) -> None:
        self.streamed: list[str] = []
        self.reports: list[tuple[Any, Any]] = []
        self.cancelled = False
        self.demo_seconds = 0.0
        self._on_cancel: list[Any] = []

    def report(self, percent: Any = None, message: Any = None) -> None:
        self.reports.append((percent, message))

    def stream(self, text: str) -> None:
        self.streamed.append(text)

    def sleep(self, seconds: float) -> bool:
        return self.cancelled

    def on_cancel(self, callback: Any) -> None:
        self._on_cancel.append(callback)


async def call(agent: ChatAgent) -> tuple[Recorder, Any]:
    ctx = Recorder()
    try:
        result = await anyio.to_thread.run_sync(agent.refresh, "acme", ctx)
    except Exception as exc:  # the test looks at what was raised
        return ctx, exc
    return ctx, result


async def test_it_streams_every_piece_and_returns_the_text_model_and_usage() -> None:
    async with fake_llm() as fake:
        ctx, result = await call(ChatAgent(base_url=fake.base_url, api_key=KEY, model="ok"))
    assert ctx.streamed == PIECES
    assert result == {"text": "".join(PIECES), "model": "ok", "usage": {"prompt_tokens": 12, "completion_tokens": 40}}
    assert fake.requests[0]["stream"] is True and fake.requests[0]["messages"][-1]["role"] == "user"
    assert fake.authorizations == [f"Bearer {KEY}"]
    assert "generating: 10 tokens" in [message for _, message in ctx.reports]


async def test_it_reads_its_settings_from_the_environment() -> None:
    agent = ChatAgent(
        environ={"JOBCAST_LLM_BASE_URL": "http://x/v1/", "JOBCAST_LLM_MODEL": "m", "JOBCAST_LLM_API_KEY": KEY}
    )
    assert (agent.base_url, agent.model) == ("http://x/v1", "m")
    assert KEY not in repr(agent)


async def test_a_429_is_transient_with_the_providers_retry_after() -> None:
    from jobcast.agents import Transient

    async with fake_llm() as fake:
        _, raised = await call(ChatAgent(base_url=fake.base_url, api_key=KEY, model="limited"))
    assert isinstance(raised, Transient) and raised.retry_after == 2.0 and "429" in str(raised)


async def test_a_401_fails_for_good_and_never_shows_the_key() -> None:
    async with fake_llm() as fake:
        _, raised = await call(ChatAgent(base_url=fake.base_url, api_key=KEY, model="denied"))
    assert isinstance(raised, LLMRefused) and "401" in str(raised)
    assert KEY not in str(raised) and "***" in str(raised)


async def test_a_dropped_connection_mid_stream_is_transient() -> None:
    from jobcast.agents import Transient

    async with fake_llm() as fake:
        ctx, raised = await call(ChatAgent(base_url=fake.base_url, api_key=KEY, model="drop"))
    assert isinstance(raised, Transient) and ctx.streamed == PIECES[:3]


async def test_cancel_mid_stream_closes_the_providers_connection_at_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the server: the job is cancelled while the model streams; the fake sees the connection close."""
    caplog.set_level(logging.DEBUG)
    async with fake_llm() as fake:
        monkeypatch.setenv("JOBCAST_LLM_BASE_URL", fake.base_url)
        monkeypatch.setenv("JOBCAST_LLM_API_KEY", KEY)
        async with live_server(agents=["tests.agents:SlowChatAgent"]) as live:
            job = await live.start("acme", "slowchat")
            with anyio.fail_after(WAIT):
                await fake.streaming.wait()
            await _output(live, job["job_id"])
            asked = time.monotonic()
            assert (await live.http.post("/api/projects/acme/agents/slowchat/cancel")).status_code == 202
            with anyio.fail_after(WAIT):
                await fake.hung_up.wait()
            final = await eventually_async(lambda: _final(live, job["job_id"]))
    assert fake.hung_up_at is not None and fake.hung_up_at - asked < 1.0
    assert final["status"] == "cancelled" and final["output"].startswith("slow0 ")
    assert not any(KEY in record.getMessage() for record in caplog.records)


async def _output(live: Live, job_id: str) -> None:
    async def some() -> bool:
        return bool((await live.http.get(f"/api/jobs/{job_id}")).json()["output"])

    await eventually_async(some)


async def _final(live: Live, job_id: str) -> dict[str, Any] | None:
    record: dict[str, Any] = (await live.http.get(f"/api/jobs/{job_id}")).json()
    return record if record["status"] not in ("queued", "running") else None


async def test_it_runs_as_an_agent_the_server_loads_by_spec_and_retries_a_429(monkeypatch: pytest.MonkeyPatch) -> None:
    async with fake_llm() as fake:
        monkeypatch.setenv("JOBCAST_LLM_BASE_URL", fake.base_url)
        monkeypatch.setenv("JOBCAST_LLM_MODEL", "ok")
        monkeypatch.setenv("JOBCAST_LLM_API_KEY", KEY)
        async with live_server(agents=["jobcast.agents:ChatAgent"]) as live:
            job = await live.start("acme", "chat")
            final = await eventually_async(lambda: _final(live, job["job_id"]))
    assert final["status"] == "completed" and final["output"] == "".join(PIECES)
    assert final["result"]["text"] == "".join(PIECES) and KEY not in str(final)
