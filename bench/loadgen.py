"""The load generator: many subscribers in one process, apart from the server.

``python -m bench.loadgen CONFIG_JSON``. It connects every client and prints ``READY``.
Then each line on stdin, ``RUN`` or ``QUIT``, starts one measured run (one JSON line of
results on stdout) or ends it, so the orchestrator can read the server's memory and CPU
between runs. Every wait has a deadline.

Modes: ``fanout`` (rounds of three transitions to N subscribers), ``sweep`` (progress
or broadcasts at a fixed rate), ``mixed`` (transitions timed while jobs report progress),
``watch`` (push against 3 s polling), ``status`` (latency of the quick status GET).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.common import parse_iso, percentile, raise_fd_limit, run
from bench.rawws import RawWebSocket, connect

CONNECT_CONCURRENCY = 200
#: a new connection per request: under load the server may close an idle keep-alive one as it is reused
FRESH_CONNECTIONS = httpx.Limits(max_keepalive_connections=0)


@dataclass
class Tally:
    expected_per_client: int = 0
    latencies: list[float] = field(default_factory=list)
    progress_latencies: list[float] = field(default_factory=list)
    delivered: int = 0
    out_of_order: int = 0
    done_clients: int = 0
    last_arrival: float = 0.0
    target: int = 0
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    bytes_received: int = 0
    progress_received: int = 0
    #: parse transitions fully (for progress and finish times); off in fanout, to keep the client cheap
    track_jobs: bool = False
    #: count only the transitions of this agent (the mixed scenario's progress jobs have transitions too)
    only_agent: bytes | None = None

    def count(self, now: float) -> None:
        self.delivered += 1
        self.last_arrival = now
        if self.delivered >= self.target:
            self.reached.set()

    def reset(self, expected_per_client: int) -> None:
        self.expected_per_client = expected_per_client
        self.latencies = []
        self.progress_latencies = []
        self.delivered = self.out_of_order = self.done_clients = self.bytes_received = self.progress_received = 0


def summary(values_s: list[float]) -> dict[str, float]:
    ms = [value * 1000 for value in values_s]
    return {
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms, default=float("nan")),
        "samples": len(ms),
    }


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


_JOB_ID = b'"job_id":"'
_ELAPSED = b'"elapsed_s":'


def job_and_elapsed(text: bytes) -> tuple[str, float]:
    """A progress message's job and elapsed time, found without parsing the whole JSON: the client reads
    progress as cheaply as it reads the peers' transitions (see ``stamp_and_seq``), so that at high rates
    the figures measure the server, not the load client's JSON parsing."""
    at = text.find(_JOB_ID) + len(_JOB_ID)
    elapsed_at = text.find(_ELAPSED) + len(_ELAPSED)
    return text[at : text.find(b'"', at)].decode(), float(text[elapsed_at : text.find(b",", elapsed_at)])


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
        self.started_at: dict[str, float] = {}
        self.finished_at: dict[str, float] = {}

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
        self.tally.bytes_received += len(text) + 2
        if text.startswith(b'{"type":"progress"'):
            self.tally.progress_received += 1
            if self.tally.track_jobs:  # timing progress needs its JSON; otherwise it costs the client nothing
                self._on_progress(text)
            return
        found = stamp_and_seq(text)
        if found is None or (self.tally.only_agent is not None and self.tally.only_agent not in text):
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
        if self.tally.track_jobs and self.kind == "jobcast":
            self._on_job(text, now)

    def _on_job(self, text: bytes, now: float) -> None:
        job = json.loads(text)["job"]
        if job["status"] == "running":
            self.started_at[job["job_id"]] = parse_iso(job["started_at"])
        elif job["finished_at"]:
            self.finished_at[job["job_id"]] = now
            self.started_at.pop(job["job_id"], None)

    def _on_progress(self, text: bytes) -> None:
        job_id, elapsed_s = job_and_elapsed(text)
        started = self.started_at.get(job_id)
        if started is not None:
            self.tally.progress_latencies.append(time.time() - (started + elapsed_s))

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


async def fire(kind: str, port: int, driver: Client | None, http: httpx.AsyncClient, command: str = "fire 1") -> None:
    if kind == "jobcast":
        response = await http.post(f"http://127.0.0.1:{port}/api/projects/bench/agents/instant/refresh")
        assert response.status_code == 202, response.text
        return
    assert driver and driver.socket
    if kind == "socketio":
        name, *arguments = command.split()
        driver.socket.send_text("42" + json.dumps([name, *(int(x) for x in arguments)]))
    else:
        driver.socket.send_text(command)


async def next_command() -> str:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    return line.strip()


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


async def subscribers(config: dict[str, Any], tally: Tally) -> tuple[list[Client], Client | None, float]:
    kind, port = config["kind"], config["port"]
    clients = [Client(kind, port, tally) for _ in range(config["clients"])]
    started = time.monotonic()
    await connect_all(clients)
    driver = None
    if kind != "jobcast":
        driver = Client(kind, port, Tally())
        await driver.connect()
    return clients, driver, time.monotonic() - started


async def timed_rounds(
    config: dict[str, Any], tally: Tally, clients: list[Client], driver: Client | None, http: httpx.AsyncClient
) -> float:
    """``rounds`` jobs of three transitions, each round waited for at every subscriber; when the first began."""
    kind, port, count, rounds = config["kind"], config["port"], config["clients"], config["rounds"]
    tally.reset(3 * rounds)
    for client in clients:
        client.received = 0
    first_fire = time.time()
    for round_index in range(rounds):
        tally.target = 3 * (round_index + 1) * count
        tally.reached = asyncio.Event()
        await fire(kind, config.get("fire_port", port), driver, http)
        try:
            await asyncio.wait_for(tally.reached.wait(), config.get("round_timeout", 30))
        except TimeoutError:
            break  # reported as delivered < expected
    return first_fire


async def fanout(config: dict[str, Any]) -> None:
    """Rounds of one job (three transitions) each, every subscriber receiving every one."""
    count, rounds = config["clients"], config["rounds"]
    tally = Tally()
    clients, driver, connect_seconds = await subscribers(config, tally)
    print("READY", flush=True)
    async with httpx.AsyncClient(timeout=30) as http:
        while await next_command() == "RUN":
            first_fire = await timed_rounds(config, tally, clients, driver, http)
            emit(
                {
                    "connect_s": round(connect_seconds, 2),
                    "expected": 3 * rounds * count,
                    "delivered": tally.delivered,
                    "complete_clients": tally.done_clients,
                    "out_of_order": tally.out_of_order,
                    "msgs_per_s": tally.delivered / max(1e-9, tally.last_arrival - first_fire),
                    **summary(tally.latencies),
                }
            )
    close_all([*clients, *([driver] if driver else [])])


async def sweep(config: dict[str, Any]) -> None:
    """Messages at a fixed rate per subscriber: progress (jobcast) or broadcasts (peers), measured over a
    window of ``seconds`` once the load is under way, so starting and stopping jobcast's jobs over HTTP
    is not counted as lost delivery."""
    kind, port, seconds = config["kind"], config["port"], config["seconds"]
    tally = Tally(track_jobs=True)
    clients, driver, _ = await subscribers(config, tally)
    print("READY", flush=True)
    async with httpx.AsyncClient(timeout=30, limits=FRESH_CONNECTIONS) as http:
        while (command := await next_command()).startswith("RUN"):
            rate = int(command.split()[1])  # messages per second to each subscriber
            tally.reset(0)
            await start_rate(kind, port, driver, http, rate, seconds + 2 * SWEEP_SETTLE_S)
            await asyncio.sleep(SWEEP_SETTLE_S)  # every job running, or the broadcast under way, by design
            timed = tally.progress_latencies if kind == "jobcast" else tally.latencies
            first, began = len(timed), time.time()
            await asyncio.sleep(seconds)  # the measured window is fixed by design
            window = timed[first:]
            elapsed = time.time() - began
            await stop_rate(kind, port, http, rate)
            if kind != "jobcast":
                await asyncio.sleep(SWEEP_SETTLE_S)  # the peer's broadcast runs out
            emit(
                {
                    "rate_per_subscriber": rate,
                    "delivered": len(window),
                    "delivered_in_run": len(timed),
                    "msgs_per_s": len(window) / elapsed,
                    **summary(window),
                }
            )
    close_all([*clients, *([driver] if driver else [])])


async def mixed(config: dict[str, Any]) -> None:
    """Rounds of transitions, timed, while five jobs report progress ten times a second each (jobcast's
    ticker jobs; the peers send the same mix). Progress runs for a fixed window around the rounds."""
    kind, port, count, rounds = config["kind"], config["port"], config["clients"], config["rounds"]
    window, warmup = config["window_s"], config["warmup_s"]
    tally = Tally(only_agent=b'"agent":"instant"')
    clients, driver, _ = await subscribers(config, tally)
    print("READY", flush=True)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30, limits=FRESH_CONNECTIONS) as http:
        while await next_command() == "RUN":
            began = time.monotonic()
            await start_progress(kind, driver, http, window)
            await asyncio.sleep(warmup)  # progress flowing before the first timed transition, by design
            first_fire = await timed_rounds(config, tally, clients, driver, http)
            last_arrival = tally.last_arrival
            progress_rate = tally.progress_received / count / max(1e-9, time.time() - first_fire)
            await asyncio.sleep(max(0.0, window - (time.monotonic() - began)))  # the fixed window ends
            if kind == "jobcast":
                for index in range(MIXED_JOBS):
                    await http.post(f"/api/projects/bench/agents/ticker{index}/cancel")
                await wait_busy(http, 0)
            emit(
                {
                    "expected": 3 * rounds * count,
                    "delivered": tally.delivered,
                    "out_of_order": tally.out_of_order,
                    "msgs_per_s": tally.delivered / max(1e-9, last_arrival - first_fire),
                    "progress_per_subscriber_s": progress_rate,
                    **summary(tally.latencies),
                }
            )
    close_all([*clients, *([driver] if driver else [])])


#: time for a sweep step's load to get under way before (and, for the peers, to run out after) its window
SWEEP_SETTLE_S = 0.25

#: jobs reporting progress in the mixed scenario, ten times a second each
MIXED_JOBS = 5


async def start_progress(kind: str, driver: Client | None, http: httpx.AsyncClient, window: float) -> None:
    if kind == "jobcast":
        for index in range(MIXED_JOBS):
            await http.post(f"/api/projects/bench/agents/ticker{index}/refresh")
        return
    await fire(kind, 0, driver, http, f"progress {MIXED_JOBS * 10} {int(window * 1000)}")


async def start_rate(
    kind: str, port: int, driver: Client | None, http: httpx.AsyncClient, rate: int, seconds: float
) -> None:
    if kind == "jobcast":
        for index in range(rate // 10):  # each pulse job sends ten progress messages a second
            await http.post(f"http://127.0.0.1:{port}/api/projects/bench/agents/pulse{index}/refresh")
        return
    await fire(kind, port, driver, http, f"rate {rate} {int(seconds * 1000)}")


async def stop_rate(kind: str, port: int, http: httpx.AsyncClient, rate: int) -> None:
    if kind == "jobcast":
        for index in range(rate // 10):
            await http.post(f"http://127.0.0.1:{port}/api/projects/bench/agents/pulse{index}/cancel")


async def watch(config: dict[str, Any]) -> None:
    """The old app's 3 s polling loop against jobcast's WebSocket, on the same jobs."""
    port, count, period = config["port"], config["clients"], config.get("poll_period", 3.0)
    tally = Tally(track_jobs=True)
    clients = [Client("jobcast", port, tally) for _ in range(count)]
    await connect_all(clients)
    print("READY", flush=True)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=30, limits=httpx.Limits(max_connections=count)
    ) as http:
        while await next_command() == "RUN":
            tally.reset(0)
            for client in clients:
                client.finished_at = {}
            job = (await http.post("/api/projects/bench/agents/busy/refresh")).json()["job"]
            polls = await asyncio.gather(*(poll_until_done(http, period, job["job_id"]) for _ in range(count)))
            finished_at = parse_iso((await http.get(f"/api/jobs/{job['job_id']}")).json()["finished_at"])
            await asyncio.wait_for(wait_all_saw(clients, job["job_id"]), 30)
            push_delays = [client.finished_at[job["job_id"]] - finished_at for client in clients]
            poll_delays = [seen - finished_at for seen, _, _ in polls]
            emit(
                {
                    "push": {
                        **summary(push_delays),
                        "requests_per_job": 1,
                        "bytes_per_job_per_client": tally.bytes_received / count,
                    },
                    "poll": {
                        **summary(poll_delays),
                        "requests_per_job": sum(requests for _, requests, _ in polls) + 1,
                        "bytes_per_job_per_client": sum(size for _, _, size in polls) / count,
                    },
                }
            )
    close_all(clients)


async def poll_until_done(http: httpx.AsyncClient, period: float, job_id: str) -> tuple[float, int, int]:
    """One old-style client: poll processing_status every ``period`` seconds from a random phase."""
    await asyncio.sleep(random.uniform(0, period))
    requests = size = 0
    while True:
        response = await http.get("/busy_agent/processing_status/bench")
        requests += 1
        size += len(response.content) + sum(len(k) + len(v) + 4 for k, v in response.headers.raw)
        body = response.json()
        if body.get("job_id") == job_id and body["status"] in ("completed", "failed"):
            return time.time(), requests, size
        await asyncio.sleep(period)


async def wait_all_saw(clients: list[Client], job_id: str) -> None:
    while not all(job_id in client.finished_at for client in clients):  # noqa: ASYNC110 - many clients, no shared event
        await asyncio.sleep(0.01)


async def wait_busy(http: httpx.AsyncClient, threads: int) -> None:
    """Until exactly ``threads`` threads run jobs: the scheduler starts (and stops) them just after the calls return."""
    deadline = time.monotonic() + 30
    while (health := (await http.get("/healthz")).json())["busy_threads"] != threads:
        assert time.monotonic() < deadline, health
        await asyncio.sleep(0.01)


async def status(config: dict[str, Any]) -> None:
    """Latency of GET /api/projects/{id}, one request at a time, as a dashboard's fallback makes it."""
    port, requests = config["port"], config["requests"]
    print("READY", flush=True)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        while (command := await next_command()).startswith("RUN"):
            busy = command == "RUN busy"
            if busy:
                for index in range(config["workers"]):
                    await http.post(f"/api/projects/busy{index}/agents/busy/refresh")
                await wait_busy(http, config["workers"])
            latencies = []
            for _ in range(requests):
                started = time.perf_counter()
                response = await http.get("/api/projects/bench")
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200
            if busy:
                for index in range(config["workers"]):
                    await http.post(f"/api/projects/busy{index}/agents/busy/cancel")
                # A refresh made while the cancelled job is still stopping would get that job back.
                await wait_busy(http, 0)
            emit(summary(latencies))


def close_all(clients: list[Client]) -> None:
    for client in clients:
        if client.socket:
            client.socket.close()


class StreamClient(Client):
    """A subscriber that times each streamed piece (``<unix time>;...``) and counts the bytes it is sent."""

    def __init__(self, port: int, tally: Tally) -> None:
        super().__init__("jobcast", port, tally)
        self.wire_bytes = 0
        self.text_bytes = 0
        self.done: asyncio.Event = asyncio.Event()

    def on_text(self, socket: RawWebSocket, text: bytes) -> None:
        if not self.greeted.done():
            self._greet(socket, text)
            return
        # A server frame of this size: the payload plus a 2-byte header (4 from 126 bytes, 10 from 64 KiB).
        self.wire_bytes += len(text) + (2 if len(text) < 126 else 4 if len(text) < 65536 else 10)
        if text.startswith(b'{"type":"output"'):
            now = time.time()
            piece = json.loads(text)["text"]
            self.text_bytes += len(piece.encode())
            for stamp in piece.split(";")[0::1]:
                head = stamp.lstrip("x")
                if head:
                    self.tally.latencies.append(now - float(head))
        elif text.startswith(b'{"type":"job"') and b'"status":"completed"' in text:
            self.done.set()


async def stream(config: dict[str, Any]) -> None:
    """Subscribers follow one job that streams 50 pieces a second; each piece is timed on arrival."""
    port, count = config["port"], config["clients"]
    tally = Tally()
    clients = [StreamClient(port, tally) for _ in range(count)]
    await connect_all(clients)  # type: ignore[arg-type]
    print("READY", flush=True)
    async with httpx.AsyncClient(timeout=30) as http:
        while await next_command() == "RUN":
            tally.reset(0)
            for client in clients:
                client.wire_bytes = client.text_bytes = 0
                client.done = asyncio.Event()
            response = await http.post(f"http://127.0.0.1:{port}/api/projects/bench/agents/stream50/refresh")
            assert response.status_code == 202, response.text
            await asyncio.wait_for(asyncio.gather(*(client.done.wait() for client in clients)), 120)
            job = (await http.get(f"http://127.0.0.1:{port}/api/jobs/{response.json()['job']['job_id']}")).json()
            output_bytes = len(job["output"].encode())
            emit(
                {
                    **summary(tally.latencies),
                    "pieces": len(tally.latencies),
                    "exact": all(client.text_bytes >= output_bytes for client in clients),
                    "output_bytes": output_bytes,
                    "wire_per_subscriber": sum(client.wire_bytes for client in clients) / count,
                }
            )
    close_all(clients)  # type: ignore[arg-type]


MODES = {"fanout": fanout, "sweep": sweep, "watch": watch, "status": status, "stream": stream, "mixed": mixed}


def main() -> None:
    raise_fd_limit()
    config = json.loads(sys.argv[1])
    run(asyncio.wait_for(MODES[config["mode"]](config), timeout=config.get("timeout", 280)))


if __name__ == "__main__":
    main()
