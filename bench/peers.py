"""The servers jobcast is measured against, run as ``python -m bench.peers KIND PORT``.

- ``ceiling``: a bare ``websockets`` server that fans out with ``websockets.broadcast()``.
- ``socketio``: python-socketio's ASGI server on uvicorn, emitting to a room.

Both send the same transition-shaped messages jobcast sends. A connection that sends
``fire N`` makes the server broadcast N rounds of three transitions, stamped as sent;
``rate R MS`` sends R transition-shaped messages a second for MS milliseconds, and
``progress R MS`` R progress-shaped ones (five jobs in turn), as running jobs report.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from bench.common import progress_like, raise_fd_limit, run, transition_like

STATUSES = ("queued", "running", "completed")
#: jobs reporting progress at once in the mixed scenario
MIXED_JOBS = 5


def rounds(count: int, start_seq: int) -> Iterator[dict[str, Any]]:
    """Three transitions per round, each stamped just before it is sent, as jobcast stamps its own."""
    for i in range(count * 3):
        yield transition_like(start_seq + i, STATUSES[i % 3])


async def at_rate(rate: int, milliseconds: int, send: Any, progress: bool = False) -> None:
    """Call ``send(payload)`` ``rate`` times a second for the given time, on schedule: transition-shaped
    messages, or (``progress``) progress-shaped ones of five jobs in turn, as five running jobs send them."""
    interval, start = 1 / rate, time.monotonic()
    for index in range(int(rate * milliseconds / 1000)):
        # Behind schedule it still yields once per message, as a server whose reports come from tasks does,
        # so a "fire" command waits behind at most one broadcast rather than all the late ones.
        await asyncio.sleep(max(0.0, start + index * interval - time.monotonic()))
        await send(progress_like(index % MIXED_JOBS) if progress else transition_like(index + 1, "running"))


async def ceiling(port: int) -> None:
    import websockets
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    clients: set[ServerConnection] = set()
    seq = 0

    async def handler(connection: ServerConnection) -> None:
        nonlocal seq
        clients.add(connection)
        try:
            await connection.send('{"type":"hello"}')
            async for message in connection:
                if isinstance(message, str) and message.startswith(("rate", "progress")):
                    rate, milliseconds = (int(x) for x in message.split()[1:])

                    async def send(payload: dict[str, Any]) -> None:
                        broadcast(clients, json.dumps(payload, separators=(",", ":")))

                    asyncio.ensure_future(at_rate(rate, milliseconds, send, progress=message.startswith("progress")))
                elif isinstance(message, str) and message.startswith("fire"):
                    for payload in rounds(int(message.split()[1]), seq + 1):
                        seq = payload["seq"]
                        broadcast(clients, json.dumps(payload, separators=(",", ":")))
                        await asyncio.sleep(0)
        except websockets.ConnectionClosed:
            pass
        finally:
            clients.discard(connection)

    async with serve(handler, "127.0.0.1", port, compression=None, max_queue=None, ping_interval=None):
        await asyncio.Future()


def socketio(port: int) -> None:
    import socketio as sio_module
    import uvicorn

    sio = sio_module.AsyncServer(async_mode="asgi", ping_interval=60, ping_timeout=60)
    seq = 0

    @sio.event
    async def connect(sid: str, environ: dict[str, Any]) -> None:
        await sio.enter_room(sid, "bench")

    @sio.on("fire")
    async def fire(sid: str, count: int) -> None:
        nonlocal seq
        for payload in rounds(int(count), seq + 1):
            seq = payload["seq"]
            await sio.emit("job", payload, room="bench")

    @sio.on("rate")
    async def rate(sid: str, rate: int, milliseconds: int) -> None:
        async def send(payload: dict[str, Any]) -> None:
            await sio.emit("job", payload, room="bench")

        sio.start_background_task(at_rate, int(rate), int(milliseconds), send)

    @sio.on("progress")
    async def progress(sid: str, rate: int, milliseconds: int) -> None:
        async def send(payload: dict[str, Any]) -> None:
            await sio.emit("progress", payload, room="bench")

        sio.start_background_task(at_rate, int(rate), int(milliseconds), send, True)

    app = sio_module.ASGIApp(sio)
    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio", ws_per_message_deflate=False
    )


def main() -> None:
    raise_fd_limit()
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "ceiling":
        run(ceiling(port))
    elif kind == "socketio":
        socketio(port)
    else:
        raise SystemExit(f"unknown peer {kind!r}")


if __name__ == "__main__":
    main()
