"""The long-poll transport: one JSON answer per request, waiting up to ``wait`` seconds for news; I/O only."""

from __future__ import annotations

import math
import re
import time

from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import access, validation
from ..cursor import Snapshot, parse_cursor, plan
from ..errors import InvalidInput
from ..jobs import OutputChunk
from ..store import Store
from ..wire import poll_events as events_reply
from ..wire import poll_snapshot, queue_payload
from .streams import REPLAY_BATCH, Services, services_of

MAX_WAIT_SECONDS = 30
CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


async def poll_events(request: Request) -> JSONResponse:
    """A long-poll holds a connection like a stream, so it counts against the client's limit."""
    grant, project_id = access.project_access(request, "read")
    services = services_of(request.state)
    wait = validation.bounded_int("wait", request.query_params.get("wait"), default=25, low=0, high=MAX_WAIT_SECONDS)
    seconds_left = grant.seconds_left(time.time())
    if seconds_left is not None:  # never answer with what happened after the token expired
        wait = min(wait, math.floor(seconds_left))
    address = access.client_address(request)
    client = poller_key(request, address)
    await services.limits.open_stream(address, services.engine.store)
    try:
        with request.state.presence.pollers.polling(project_id, client):
            return await _poll(request, services, project_id, wait)
    finally:
        services.limits.connections.release(address)


def poller_key(request: Request, address: str) -> str:
    """Who polls, for presence: the ``client`` id a client sends (jobcast.js does), else address and user agent."""
    client = request.query_params.get("client")
    if client is None:
        return f"{address} {request.headers.get('user-agent', '')[:200]}"
    if not CLIENT_ID.fullmatch(client):
        raise InvalidInput("invalid_client", "client is 1 to 64 letters, digits, '-' or '_'")
    return f"id {client}"


async def _poll(request: Request, services: Services, project_id: str, wait: int) -> JSONResponse:
    store = services.engine.store
    cursor = parse_cursor(request.query_params.get("epoch"), request.query_params.get("after"))
    have = parse_output_cursor(request.query_params.get("output"))
    decision = plan(
        cursor, epoch=store.epoch, last_seq=await store.last_seq(project_id), history=services.settings.history
    )
    ended: list[OutputChunk] = []
    if isinstance(decision, Snapshot):
        state = await store.snapshot(project_id, list(services.engine.agents))
        body = poll_snapshot(project_id, store.epoch, state, decision.reason, await services.engine.places())
    else:
        events = await store.events_after(project_id, decision.after, REPLAY_BATCH)
        if not events and wait:
            # Woken by an event or by a queued job's new place; either way the reply carries what is new.
            await services.hub.unless_closing(services.hub.wait_for_events(project_id, decision.after, wait), False)
            events = await store.events_after(project_id, decision.after, REPLAY_BATCH)
        body = events_reply(store.epoch, decision.after, events)
        ended = [chunk for event in events if (chunk := event.output()) is not None]
    body["progress"] = [p for p in services.hub.latest_progress(project_id) if p["seq"] <= body["seq"]]
    places = await services.engine.places()
    body["queue"] = [queue_payload(place) for place in places.values() if place.project_id == project_id]
    body["output"] = [*_since(ended, have), *await _output_since(store, project_id, have)]
    body["watching"] = await request.state.presence.watching(project_id)
    return JSONResponse(body)


def parse_output_cursor(raw: str | None) -> dict[str, tuple[int, int]]:
    """``output=JOB.ATTEMPT.LENGTH,...``: how much of each running job's output the client has."""
    have: dict[str, tuple[int, int]] = {}
    for part in (raw or "").split(","):
        if not part:
            continue
        job_id, _, rest = part.partition(".")
        attempt, _, length = rest.partition(".")
        numbers = validation.whole_number(attempt, max_digits=6), validation.whole_number(length, max_digits=9)
        if not (0 < len(job_id) <= 64 and job_id.isalnum() and numbers[0] is not None and numbers[1] is not None):
            raise InvalidInput("invalid_output", "output is JOB_ID.ATTEMPT.LENGTH, comma-separated")
        have[job_id] = (numbers[0], numbers[1])
        if len(have) > 100:
            raise InvalidInput("invalid_output", "output names at most 100 jobs")
    return have


async def _output_since(store: Store, project_id: str, have: dict[str, tuple[int, int]]) -> list[dict[str, object]]:
    """Each running job's output past what the client has (all of it for a job or attempt it does not know)."""
    return _since(await store.outputs_of(project_id), have)


def _since(chunks: list[OutputChunk], have: dict[str, tuple[int, int]]) -> list[dict[str, object]]:
    """Each job's output past what the client has: the running jobs', and those that ended in this reply
    (their final events do not repeat it)."""
    found = []
    for chunk in chunks:
        attempt, length = have.get(chunk.job_id, (chunk.attempt, 0))
        rest = chunk.after(length if attempt == chunk.attempt else 0)
        if rest is not None:
            found.append(rest.to_dict())
    return found
