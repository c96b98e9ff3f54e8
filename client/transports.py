"""The three ways to receive a project's messages: WebSocket, Server-Sent Events, long-poll.

Each is an async generator of the same message dicts, opened with the cursor of the
moment. Each raises only :class:`~client.errors.TransportError` (it could not connect,
was refused, or its stream ended), or :class:`~client.errors.ServerRefused` for input
that every transport would refuse (a bad project id), or ProtocolError. The parsing of
SSE frames and long-poll replies is pure, so tests call it directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.typing import Origin

from .answers import auth_headers, describe, json_object, refusal
from .cursor import Cursor, Message
from .endpoint import Endpoint
from .errors import ConnectFailed, ProtocolError, ServerRefused, StreamLost, TransportRefused
from .output import Outputs

#: the largest message accepted from the server (results can be big)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: seconds an open SSE stream may stay silent before it counts as lost (the server's
#: keep-alive comes every 15 s by default)
SSE_READ_TIMEOUT = 60.0
#: WebSocket close codes that mean the client broke the protocol: reconnecting won't help
_CLIENT_FAULTS = {1003: "the server refused a binary frame", 1009: "the server refused a message as too big"}
#: refusals that every transport would give alike: the token, not the transport, is at fault
_AUTH_CODES = frozenset({"auth_required", "invalid_token", "token_expired", "forbidden"})


@dataclasses.dataclass(frozen=True)
class Connection:
    """What a transport needs to open one stream."""

    endpoint: Endpoint
    project_id: str
    #: the subscription's cursor at the moment of asking
    cursor: Callable[[], Cursor | None]
    http: httpx.AsyncClient
    open_timeout: float = 10.0
    poll_wait: int = 25
    #: an Origin header for the WebSocket handshake (browsers send one; programs need not)
    origin: str | None = None
    #: sent as ``Authorization: Bearer`` (the HTTP client already carries it for SSE and long-poll)
    token: str | None = dataclasses.field(default=None, repr=False)


Opener = Callable[[Connection], AsyncGenerator[Message, None]]


def classify(transport: str, refused: ServerRefused) -> Exception:
    """A 400 or a token refusal is fatal; a 429 or 5xx is transient; any other refusal is the transport's."""
    if refused.status == 400 or refused.code in _AUTH_CODES:
        return refused
    if refused.status >= 500 or refused.status == 429:
        return ConnectFailed(transport, f"{refused.status} {refused.code}: {refused.message}")
    return TransportRefused(transport, refused)


def decode(text: str | bytes, transport: str) -> Message:
    try:
        message = json.loads(text)
    except ValueError:
        message = None
    if not isinstance(message, dict) or "type" not in message:
        raise ProtocolError(f"the server sent something that is not a jobcast message over {transport}")
    return message


# -- WebSocket -----------------------------------------------------------------------------


async def websocket_messages(conn: Connection) -> AsyncGenerator[Message, None]:
    socket = await _open_websocket(conn)
    async with socket:
        try:
            async for text in socket:
                yield decode(text, "ws")
        except ConnectionClosed:
            pass
        code = socket.close_code
        if code in _CLIENT_FAULTS:
            raise ProtocolError(_CLIENT_FAULTS[code])
        raise StreamLost("ws", f"the server closed the WebSocket ({code or 'no close frame'})")


async def _open_websocket(conn: Connection) -> ClientConnection:
    url = conn.endpoint.ws(conn.project_id, conn.cursor())
    try:
        return await connect(
            url,
            origin=None if conn.origin is None else Origin(conn.origin),
            additional_headers=auth_headers(conn.token),
            compression=None,
            open_timeout=conn.open_timeout,
            close_timeout=2,
            max_size=MAX_MESSAGE_BYTES,
        )
    except InvalidStatus as exc:
        answer = exc.response
        raise classify("ws", refusal(answer.status_code, bytes(answer.body or b""), answer.reason_phrase)) from exc
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise ConnectFailed("ws", describe(exc)) from exc


# -- Server-Sent Events --------------------------------------------------------------------


class SseParser:
    """Frames of a ``text/event-stream``, fed one line at a time. Pure."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> Message | None:
        """The message this line completes, if it is the blank line that ends a frame."""
        if not line:
            data, self._data = self._data, []
            return decode("\n".join(data), "sse") if data else None
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None  # comments (": keep-alive"), id, event and retry need nothing here


async def sse_messages(conn: Connection) -> AsyncGenerator[Message, None]:
    cursor = conn.cursor()
    headers = {"accept": "text/event-stream", **({"last-event-id": str(cursor)} if cursor else {})}
    timeout = httpx.Timeout(conn.open_timeout, read=SSE_READ_TIMEOUT)
    path = conn.endpoint.project(conn.project_id, "/events/stream")
    request = conn.http.build_request("GET", path, headers=headers, timeout=timeout)
    try:
        response = await conn.http.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise ConnectFailed("sse", describe(exc)) from exc
    try:
        await _check_stream(response)
        parser = SseParser()
        async with contextlib.aclosing(_lines(response)) as lines:
            async for line in lines:
                if (message := parser.feed(line)) is not None:
                    yield message
        raise StreamLost("sse", "the server ended the event stream")
    finally:
        await response.aclose()


async def _check_stream(response: httpx.Response) -> None:
    if response.status_code != 200:
        body = await _read(response)
        raise classify("sse", refusal(response.status_code, body, response.reason_phrase))
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        refused = ServerRefused("not_event_stream", "the answer was not an event stream", response.status_code)
        raise TransportRefused("sse", refused)


async def _read(response: httpx.Response) -> bytes:
    try:
        return await response.aread()
    except httpx.HTTPError as exc:
        raise ConnectFailed("sse", describe(exc)) from exc


async def _lines(response: httpx.Response) -> AsyncGenerator[str, None]:
    try:
        async for line in response.aiter_lines():
            yield line
    except httpx.HTTPError as exc:
        raise StreamLost("sse", describe(exc)) from exc


# -- long-poll -----------------------------------------------------------------------------


class PollReader:
    """The messages in long-poll replies, shaped like the streams'. Pure.

    A snapshot reply becomes a ``snapshot`` message; the first reply of a resume gets a
    ``welcome``. Progress and queued jobs' places, which every reply repeats, pass only when they changed.
    """

    def __init__(self, project_id: str) -> None:
        self.project_id = project_id
        self._first = True
        self._progress: dict[str, tuple[Any, ...]] = {}
        self._places: dict[str, tuple[Any, ...]] = {}
        #: what each running job's output is so far: the next poll asks only for what follows
        self.outputs = Outputs()

    def messages(self, reply: Message) -> Iterator[Message]:
        try:
            yield from self._opening(reply)
            # Output first: a job that ended in this reply has its tail here, and nothing follows its end.
            yield from self._new_output(reply.get("output", []))
            yield from reply["events"]
            yield from self._new_progress(reply.get("progress", []))
            yield from self._new_places(reply.get("queue", []))
        except (KeyError, TypeError) as exc:
            raise ProtocolError("the server's long-poll reply is not in the jobcast shape") from exc
        self._first = False

    def _opening(self, reply: Message) -> Iterator[Message]:
        common = {"project_id": self.project_id, "epoch": reply["epoch"], "seq": reply["seq"]}
        if "snapshot" in reply:
            state = reply["snapshot"]
            extra = {"reason": reply.get("reason"), "agents": state["agents"], "server_time": state.get("server_time")}
            yield {"type": "snapshot", **common, "recovered": False, **extra}
        elif self._first:
            yield {"type": "welcome", **common, "recovered": True}

    def _new_progress(self, progress: list[Message]) -> Iterator[Message]:
        for message in progress:
            key = (message.get("seq"), message.get("elapsed_s"), message.get("percent"), message.get("message"))
            if self._progress.get(str(message.get("job_id"))) != key:
                self._progress[str(message.get("job_id"))] = key
                yield message

    def _new_output(self, output: list[Message]) -> Iterator[Message]:
        for message in output:
            if self.outputs.apply(message):
                yield message

    def _new_places(self, places: list[Message]) -> Iterator[Message]:
        for message in places:
            key = (message.get("position"), message.get("waiting_for"), message.get("detail"))
            if self._places.get(str(message.get("job_id"))) != key:
                self._places[str(message.get("job_id"))] = key
                yield message


async def poll_messages(conn: Connection) -> AsyncGenerator[Message, None]:
    reader = PollReader(conn.project_id)
    wait = 0  # the first reply comes at once, so the stream opens at once
    while True:
        reply = await _poll(conn, wait, reader.outputs.cursor())
        for message in reader.messages(reply):
            yield message
        wait = conn.poll_wait


async def _poll(conn: Connection, wait: int, output: str = "") -> Message:
    cursor = conn.cursor()
    params: dict[str, str | int] = {"wait": wait}
    if output:
        params["output"] = output
    if cursor is not None:
        params.update(epoch=cursor.epoch, after=cursor.after)
    timeout = httpx.Timeout(conn.open_timeout, read=wait + conn.open_timeout)
    path = conn.endpoint.project(conn.project_id, "/events")
    try:
        response = await conn.http.get(path, params=params, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ConnectFailed("poll", describe(exc)) from exc
    if response.status_code != 200:
        raise classify("poll", refusal(response.status_code, response.content, response.reason_phrase))
    return json_object(response.content, "the long-poll route")


OPENERS: dict[str, Opener] = {"ws": websocket_messages, "sse": sse_messages, "poll": poll_messages}
