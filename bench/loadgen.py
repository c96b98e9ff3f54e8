"""The load generator: many WebSocket subscribers in one process, apart from the server.

``python -m bench.loadgen CONFIG_JSON``. It connects every client, prints ``READY``,
waits for ``GO`` on stdin (so the orchestrator can read the server's idle memory),
fires the rounds, and prints one JSON line of results. Every loop has a deadline.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.common import parse_iso, percentile, raise_fd_limit
from bench.rawws import RawWebSocket, connect

CONNECT_CONCURRENCY = 200


@dataclass
class Tally:
    expected_per_client: int = 0
    latencies: list[float] = field(default_factory=list)
    delivered: int = 0
    out_of_order: int = 0
    done_clients: int = 0
    last_arrival: float = 0.0
    target: int = 0
    reached: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self, now: float) -> None:
        self.delivered += 1
        self.last_arrival = now
        if self.delivered >= self.target:
            self.reached.set()


_UPDATED_AT = b'"updated_at":"'
_SEQ = b'"seq":'


def stamp_and_seq(text: bytes) -> tuple[float, int] | None:
    """The transition's own timestamp and seq, found without parsing the whole JSON."""
    if b'"type":"job"' not in text:
        return None
    at = text.find(_UPDATED_AT) + len(_UPDATED_AT)
    seq_at = text.find(_SEQ) + len(_SEQ)
    seq_end = text.find(b",", seq_at)
    return parse_iso(text[at : text.find(b'"', at)].decode()), int(text[seq_at:seq_end])


class Client:
    """One subscriber, speaking jobcast's protocol, bare WebSocket, or Engine.IO/Socket.IO."""

    def __init__(self, kind: str, port: int, tally: Tally) -> None:
        self.kind = kind
        self.port = port
        self.tally = tally
        self.received = 0
        self.last_seq = 0
        self.socket: RawWebSocket | None = None
        self.greeted: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def path(self) -> str:
        if self.kind == "jobcast":
            return "/ws/projects/bench"
        if self.kind == "socketio":
            return "/socket.io/?EIO=4&transport=websocket"
        return "/"

    async def connect(self) -> None:
        self.socket = await connect(self.port, self.path, self.on_text)
        await asyncio.wait_for(self.greeted, 60)

    def on_text(self, socket: RawWebSocket, text: bytes) -> None:
        if not self.greeted.done():
            self._greet(socket, text)
            return
        if self.kind == "socketio":
            if text == b"2":
                socket.send_text("3")
                return
            if not text.startswith(b"42"):
                return
        found = stamp_and_seq(text)
        if found is None:
            return
        stamp, seq = found
        now = time.time()
        self.tally.latencies.append(now - stamp)
        self.tally.count(now)
        if seq <= self.last_seq:
            self.tally.out_of_order += 1
        self.last_seq = seq
        self.received += 1
        if self.received == self.tally.expected_per_client:
            self.tally.done_clients += 1

    def _greet(self, socket: RawWebSocket, text: bytes) -> None:
        """The first message: jobcast's snapshot, the ceiling's hello, or Socket.IO's handshake."""
        if self.kind == "socketio":
            if text.startswith(b"0{"):
                socket.send_text("40")
                return
            if not text.startswith(b"40"):
                return
        self.greeted.set_result(None)


async def connect_all(clients: list[Client]) -> None:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(client: Client) -> None:
        async with gate:
            await client.connect()

    await asyncio.gather(*(one(client) for client in clients))


async def fire(kind: str, port: int, driver: Client | None, http: httpx.AsyncClient) -> None:
    if kind == "jobcast":
        response = await http.post(f"http://127.0.0.1:{port}/api/projects/bench/agents/instant/refresh")
        assert response.status_code == 202, response.text
    elif kind == "socketio":
        assert driver and driver.socket
        driver.socket.send_text('42["fire",1]')
    else:
        assert driver and driver.socket
        driver.socket.send_text("fire 1")


async def fanout(config: dict[str, Any]) -> dict[str, Any]:
    kind, port, count, rounds = config["kind"], config["port"], config["clients"], config["rounds"]
    tally = Tally(expected_per_client=3 * rounds)
    clients = [Client(kind, port, tally) for _ in range(count)]
    started = time.monotonic()
    await connect_all(clients)
    driver = None
    if kind != "jobcast":
        driver = Client(kind, port, Tally())
        await driver.connect()
    connect_seconds = time.monotonic() - started
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    async with httpx.AsyncClient(timeout=30) as http:
        first_fire = time.time()
        for round_index in range(rounds):
            tally.target = 3 * (round_index + 1) * count
            tally.reached = asyncio.Event()
            await fire(kind, port, driver, http)
            try:
                await asyncio.wait_for(tally.reached.wait(), config.get("round_timeout", 30))
            except TimeoutError:
                break  # reported as delivered < expected
    duration = max(1e-9, tally.last_arrival - first_fire)
    for client in [*clients, *([driver] if driver else [])]:
        if client.socket:
            client.socket.close()
    latencies_ms = [value * 1000 for value in tally.latencies]
    return {
        "kind": kind,
        "clients": count,
        "connect_s": round(connect_seconds, 2),
        "expected": 3 * rounds * count,
        "delivered": tally.delivered,
        "complete_clients": tally.done_clients,
        "out_of_order": tally.out_of_order,
        "p50_ms": percentile(latencies_ms, 50),
        "p99_ms": percentile(latencies_ms, 99),
        "max_ms": max(latencies_ms, default=float("nan")),
        "msgs_per_s": tally.delivered / duration,
    }


def main() -> None:
    raise_fd_limit()
    config = json.loads(sys.argv[1])
    result = asyncio.run(asyncio.wait_for(fanout(config), timeout=config.get("timeout", 240)))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
