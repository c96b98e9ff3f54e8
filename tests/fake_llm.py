"""A fake OpenAI-compatible chat-completions server for the tests: real HTTP, real SSE framing.

The model name picks the behaviour:

* ``ok``: streams ``PIECES`` pieces, then a usage chunk, then ``[DONE]``;
* ``limited``: ``429`` with ``Retry-After: 2``;
* ``denied``: ``401`` whose message echoes the key, as some providers do;
* ``drop``: streams three pieces, then the connection dies mid-stream;
* ``slow``: three pieces, then a minute of silence; records when the client hung up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

PIECES = [f"word{index} " for index in range(40)]


@dataclasses.dataclass
class FakeLLM:
    port: int = 0
    requests: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    authorizations: list[str] = dataclasses.field(default_factory=list)
    #: when a ``slow`` stream's client hung up (time.monotonic)
    hung_up_at: float | None = None
    hung_up: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    streaming: anyio.Event = dataclasses.field(default_factory=anyio.Event)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self.authorizations.append(request.headers.get("authorization", ""))
        model = body["model"]
        if model == "limited":
            error = {"error": {"message": "Rate limit reached", "type": "requests"}}
            return JSONResponse(error, status_code=429, headers={"retry-after": "2"})
        if model == "denied":
            key = request.headers.get("authorization", "").removeprefix("Bearer ")
            return JSONResponse({"error": {"message": f"Incorrect API key provided: {key}"}}, status_code=401)
        return StreamingResponse(self._stream(model), media_type="text/event-stream")

    async def _stream(self, model: str) -> AsyncIterator[bytes]:
        if model == "slow":
            try:
                self.streaming.set()
                for index in range(3):
                    yield _event({"model": model, "choices": [{"delta": {"content": f"slow{index} "}}]})
                await anyio.sleep(60)  # thinking: only closing the connection ends the wait before it is over
            finally:  # the client closed the connection: uvicorn cancels this generator
                self.hung_up_at = time.monotonic()
                self.hung_up.set()
            return
        pieces = PIECES[:3] if model == "drop" else PIECES
        for piece in pieces:
            yield _event({"model": model, "choices": [{"index": 0, "delta": {"content": piece}}]})
        if model == "drop":
            raise RuntimeError("the fake provider's connection dies mid-stream")
        yield _event({"model": model, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": len(PIECES)}})
        yield b"data: [DONE]\n\n"


def _event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


@contextlib.asynccontextmanager
async def fake_llm() -> AsyncIterator[FakeLLM]:
    """The fake on a free port, served by uvicorn in the test's event loop."""
    fake = FakeLLM()
    app = Starlette(routes=[Route("/v1/chat/completions", fake.completions, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    fake.port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    with sock:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(lambda: server.serve(sockets=[sock]))
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
                await anyio.sleep(0.01)
            try:
                yield fake
            finally:
                server.should_exit = True
