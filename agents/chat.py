"""``ChatAgent``: an agent that calls a real LLM through any OpenAI-compatible chat-completions API.

OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp's server and LM Studio all speak it. The
agent asks for a streamed answer (``"stream": true``), passes every piece of text to
``ctx.stream`` as it arrives, closes the stream at once when the job is cancelled (the
provider stops generating, and billing), and turns the provider's "try later" answers
into :class:`~jobcast.agents.Transient` failures that the retry policy retries.

Configure it with ``JOBCAST_LLM_BASE_URL``, ``JOBCAST_LLM_API_KEY`` and
``JOBCAST_LLM_MODEL``, or the same as constructor arguments; override :meth:`messages`
to build the prompt. docs/agents.md has examples for OpenAI, Ollama and vLLM.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from .contract import Cancelled, Context, Retry, Transient

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
#: Statuses that mean "not now": rate limits, overload, a gateway that lost the backend.
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
#: Progress is reported every this many pieces of text (each report is a hop to the event loop).
REPORT_EVERY = 10


class LLMRefused(Exception):
    """The provider refused the request for good (a bad request, key, permission or model)."""


class ChatAgent:
    name = "chat"
    retry = Retry(attempts=3, backoff=2.0, max_backoff=60.0)
    timeout = 600.0

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        *,
        name: str | None = None,
        environ: Mapping[str, str] | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
    ) -> None:
        env = os.environ if environ is None else environ
        self.base_url = (base_url or env.get("JOBCAST_LLM_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self._api_key = api_key if api_key is not None else env.get("JOBCAST_LLM_API_KEY", "")
        self.model = model or env.get("JOBCAST_LLM_MODEL") or DEFAULT_MODEL
        if name is not None:
            self.name = name
        self._timeout = httpx.Timeout(connect_timeout, read=read_timeout)

    def __repr__(self) -> str:  # the key never shows, not even in a traceback's locals
        return f"ChatAgent(base_url={self.base_url!r}, model={self.model!r})"

    def messages(self, project_id: str) -> list[dict[str, str]]:
        """The prompt. Override it: the default asks for a short status summary of the project."""
        return [
            {"role": "system", "content": "You write short, factual project status summaries."},
            {"role": "user", "content": f"Summarise the current status of project {project_id} in three sentences."},
        ]

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        body = {
            "model": self.model,
            "messages": self.messages(project_id),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {"authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        ctx.report(percent=None, message=f"asking {self.model}")
        try:
            with (
                httpx.Client(timeout=self._timeout) as http,
                http.stream("POST", f"{self.base_url}/chat/completions", json=body, headers=headers) as response,
            ):
                ctx.on_cancel(lambda: _hang_up(response))  # stop the generation (and the bill) at once
                self._check(response)
                return self._read(response, ctx)
        except (httpx.TransportError, httpx.StreamError) as exc:
            if ctx.cancelled:
                raise Cancelled from None
            raise Transient(f"the connection to the LLM API failed: {type(exc).__name__}") from None

    def _check(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        response.read()
        reason = self._safe(_error_text(response))
        if response.status_code in TRANSIENT_STATUSES:
            raise Transient(
                f"the LLM API answered {response.status_code}: {reason}",
                retry_after=_retry_after(response.headers),
            )
        raise LLMRefused(f"the LLM API refused the request ({response.status_code}): {reason}")

    def _read(self, response: httpx.Response, ctx: Context) -> dict[str, Any]:
        parts: list[str] = []
        pieces = 0
        usage: dict[str, Any] | None = None
        model = self.model
        for event in _sse_data(response.iter_lines()):
            if ctx.cancelled:
                raise Cancelled
            if event == "[DONE]":
                break
            chunk = json.loads(event)
            model = chunk.get("model") or model
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    parts.append(text)
                    ctx.stream(text)
                    pieces += 1
                    if pieces % REPORT_EVERY == 0:
                        ctx.report(message=f"generating: {pieces} tokens")
        if ctx.cancelled:
            raise Cancelled
        ctx.report(percent=100, message=f"done: {pieces} tokens")
        prompt_tokens = (usage or {}).get("prompt_tokens")
        completion_tokens = (usage or {}).get("completion_tokens", pieces)
        return {
            "text": "".join(parts),
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        }

    def _safe(self, text: str) -> str:
        """Provider text with the key taken out (some echo the header back) and cut short."""
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text[:300]


def _hang_up(response: httpx.Response) -> None:
    """Shut the connection down under the thread reading it (closing alone would not wake a blocked read):
    the provider sees the client go, and stops generating."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The ``data:`` payloads of a server-sent event stream, one per event (multi-line data joined)."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield "\n".join(data)


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return response.text.strip() or response.reason_phrase
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error or response.reason_phrase)


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from ``Retry-After`` (seconds) or OpenAI's ``x-ratelimit-reset-requests`` (like ``1.5s``)."""
    for name in ("retry-after", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        value = headers.get(name, "").strip().removesuffix("s")
        try:
            seconds = float(value)
        except ValueError:
            continue
        if seconds >= 0:
            return seconds
    return None
