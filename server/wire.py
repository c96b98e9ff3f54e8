"""The wire format: every message the server sends, built by pure functions, and its SSE framing.

WebSocket, Server-Sent Events and long-poll (:mod:`.push`) carry the same messages;
docs/protocol.md describes them. Nothing here does I/O, so each shape is tested
directly. The module depends on the job records alone, so the hub can encode an event
once for all of a channel's subscribers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import InvalidInput
from .jobs import Event, OutputChunk, ProgressUpdate, ProjectState, isoformat, now
from .scheduling import Place

#: The largest message a client may send (uvicorn enforces it on the socket, the transport on the text).
MAX_INBOUND_BYTES = 64 * 1024

#: Why a subscriber is closed with 1013: the close frame's reason, and the log's.
FELL_BEHIND = "too far behind; resume from your cursor"
NEW_EPOCH = "the store started a new epoch; reconnect for a fresh snapshot"
CHANNEL_FAILED = "the project's channel stopped; reconnect with your cursor"
STORE_DOWN = "the store is unavailable; try again shortly"

#: An SSE stream's first bytes: how long the browser waits before it reconnects by itself.
SSE_RETRY = b"retry: 2000\n\n"
SSE_KEEPALIVE = b": keep-alive\n\n"


@dataclasses.dataclass(frozen=True)
class Message:
    """One encoded message for a subscriber. ``event_id`` is ``epoch:seq`` for transitions and snapshots."""

    type: str
    text: str
    event_id: str | None = None

    @functools.cached_property
    def data(self) -> bytes:
        """UTF-8, computed once however many subscribers write it."""
        return self.text.encode()

    @functools.cached_property
    def texts(self) -> tuple[bytes, ...]:
        return (self.data,)

    @functools.cached_property
    def frame(self) -> bytes:
        """The WebSocket frame, built once: a socket without extensions writes these very bytes."""
        return text_frame(self.data)


@dataclasses.dataclass(frozen=True)
class Batch:
    """Several messages framed once for every subscriber, written to each ready socket in one write."""

    texts: tuple[bytes, ...]
    frame: bytes

    @classmethod
    def of(cls, messages: Iterable[Message]) -> Batch:
        shown = list(messages)
        return cls(tuple(m.data for m in shown), b"".join(m.frame for m in shown))


def text_frame(data: bytes) -> bytes:
    """A final, unmasked text frame (RFC 6455, 5.2), as a server sends it when no extension applies."""
    length = len(data)
    if length < 126:
        header = struct.pack("!BB", 0x81, length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x81, 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 127, length)
    return header + data


def encode(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))


def server_time() -> str | None:
    return isoformat(now())


# -- what the server pushes ------------------------------------------------------------------


def job_message(event: Event) -> Message:
    """A transition: ``{"type": "job", "epoch", "seq", "project_id", "agent", "job"}``."""
    return Message("job", encode(event.to_dict()), f"{event.epoch}:{event.seq}")


def progress_message(update: ProgressUpdate) -> Message:
    return Message("progress", encode(update.to_dict()))


def output_message(chunk: OutputChunk) -> Message:
    """``{"type": "output", "project_id", "agent", "job_id", "attempt", "offset", "text"}``: apply by offset."""
    return Message("output", encode(chunk.to_dict()))


def queue_message(place: Place) -> Message:
    """Where a queued job stands: ``{"type": "queue", "project_id", "agent", "job_id", "position", ...}``."""
    return Message("queue", encode(queue_payload(place)))


def queue_payload(place: Place) -> dict[str, Any]:
    return {
        "type": "queue",
        "project_id": place.project_id,
        "agent": place.agent,
        "job_id": place.job_id,
        **place.to_dict(),
    }


def presence_message(project_id: str, watching: int) -> Message:
    """How many clients watch the project, every transport and process: ``{"type": "presence", ...}``."""
    return Message("presence", encode({"type": "presence", "project_id": project_id, "watching": watching}))


def snapshot_message(project_id: str, epoch: str, state: ProjectState, reason: str) -> Message:
    """The whole project, ``recovered: false``: what a subscriber gets when it cannot resume exactly."""
    payload = {
        "type": "snapshot",
        "project_id": project_id,
        "epoch": epoch,
        "seq": state.seq,
        "recovered": False,
        "reason": reason,
        "agents": agents_state(state),
        "server_time": server_time(),
    }
    return Message("snapshot", encode(payload), f"{epoch}:{state.seq}")


def welcome_message(project_id: str, epoch: str, seq: int) -> Message:
    """``recovered: true``: the transitions the client missed follow, in order."""
    welcome = {"type": "welcome", "project_id": project_id, "epoch": epoch, "seq": seq, "recovered": True}
    return Message("welcome", encode(welcome))


def error_message(code: str, message: str) -> Message:
    return Message("error", encode(error_payload(code, message)))


def error_payload(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def agents_state(state: ProjectState, places: Mapping[str, Place] | None = None) -> dict[str, Any]:
    """The ``agents`` object of a project status or snapshot; ``places``: where queued jobs stand, by job id."""
    agents: dict[str, Any] = {}
    places = places or {}
    for name, job in state.jobs.items():
        last = state.results.get(name)
        place = None if job is None else places.get(job.job_id)
        agents[name] = {
            "job": None if job is None else job.to_dict(queue=None if place is None else place.to_dict()),
            "last_result": None if last is None else last.result,
            "last_result_at": None if last is None else isoformat(last.at),
        }
    return agents


# -- what the server answers a client's message -------------------------------------------------


def read_client_message(text: str) -> dict[str, Any]:
    """A client's text message: a JSON object with a ``type``, or InvalidInput with the code that says why not."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes ("[" * 60000)
        raise InvalidInput("bad_json", "messages must be JSON objects") from None
    if not isinstance(message, dict):
        raise InvalidInput("bad_message", "messages must be JSON objects")
    if message.get("type") is None:
        raise InvalidInput("missing_type", "messages need a 'type' field")
    return message


def unknown_type(kind: Any, known: str) -> InvalidInput:
    return InvalidInput("unknown_type", f"unknown message type {str(kind)[:40]!r}; {known}")


def client_reply(text: str) -> dict[str, Any]:
    """The answer to one client text message: ``pong`` to a ``ping``, else an ``error`` with a code."""
    try:
        message = read_client_message(text)
        if message["type"] != "ping":
            raise unknown_type(message["type"], "the only one is 'ping'")
    except InvalidInput as exc:
        return error_payload(exc.code, exc.message)
    return {"type": "pong"}


# -- long-poll replies ----------------------------------------------------------------------------


def poll_snapshot(
    project_id: str, epoch: str, state: ProjectState, reason: str, places: Mapping[str, Place] | None = None
) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "seq": state.seq,
        "recovered": False,
        "reason": reason,
        "snapshot": {"project_id": project_id, "agents": agents_state(state, places), "server_time": server_time()},
        "events": [],
    }


def poll_events(epoch: str, after: int, events: Iterable[Event]) -> dict[str, Any]:
    shown = [event.to_dict() for event in events]
    seq = shown[-1]["seq"] if shown else after
    return {"epoch": epoch, "seq": seq, "recovered": True, "events": shown}


# -- Server-Sent Events framing ----------------------------------------------------------------


def sse_frame(message: Message) -> bytes:
    """``id: epoch:seq`` (transitions and snapshots), ``event: type`` and ``data: json``, then a blank line."""
    lines = [f"event: {message.type}"]
    if message.event_id is not None:
        lines.insert(0, f"id: {message.event_id}")
    lines.append(f"data: {message.text}")
    return ("\n".join(lines) + "\n\n").encode()


def sse_frames(messages: Iterable[Message]) -> bytes:
    return b"".join(sse_frame(message) for message in messages)
