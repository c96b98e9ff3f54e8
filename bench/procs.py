"""Starting and measuring the servers under test, each in its own process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench.agents import PULSE_COUNT, TICKER_COUNT
from bench.common import cpu_seconds, free_port, rss_bytes

PULSE_AGENTS = [f"bench.agents:Pulse{i}" for i in range(PULSE_COUNT)]
TICKER_AGENTS = [f"bench.agents:Ticker{i}" for i in range(TICKER_COUNT)]


@dataclass
class Server:
    kind: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def rss(self) -> int:
        return rss_bytes(self.process.pid)

    @property
    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)


def server_command(
    kind: str, port: int, workers: int = 8, demo_seconds: float = 2.0, store: str = "memory://"
) -> list[str]:
    if kind == "jobcast":
        agents = ["bench.agents:Instant", "bench.agents:Busy", "bench.agents:Stream50", *PULSE_AGENTS, *TICKER_AGENTS]
        return [
            sys.executable, "-m", "jobcast", "serve", "--port", str(port), "--store", store,
            "--log-level", "warning", "--threads", str(workers), "--demo-seconds", str(demo_seconds),
            "--send-buffer", "100000", "--max-connections-per-client", "1000000",
            *[arg for agent in agents for arg in ("--agent", agent)],
        ]  # fmt: skip
    return [sys.executable, "-m", "bench.peers", kind, str(port)]


@contextlib.contextmanager
def running(kind: str, **options: Any) -> Iterator[Server]:
    port = free_port()
    process = subprocess.Popen(server_command(kind, port, **options), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, process)
        yield Server(kind, port, process)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read().decode() if process.stderr else ''}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            time.sleep(0.2)  # the port accepts; give the app its lifespan start-up
            return
        time.sleep(0.05)
    raise RuntimeError(f"server on {port} did not start")


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    """A throwaway redis-server on a free port (no persistence); None if redis-server is not installed."""
    program = shutil.which("redis-server")
    if program is None:
        yield None
        return
    port = free_port()
    process = subprocess.Popen(
        [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(15)


class LoadGen:
    """A ``bench.loadgen`` process: connected once, then driven run by run."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        line = self._readline()
        if line.strip() != "READY":
            self.close()
            raise RuntimeError(f"load generator failed before READY: {line!r}")

    def _readline(self) -> str:
        assert self.process.stdout
        return self.process.stdout.readline()

    def run(self, command: str = "RUN") -> dict[str, Any]:
        assert self.process.stdin
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = self._readline()
        if not line:
            raise RuntimeError(f"load generator died during {command!r}")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        if self.process.poll() is None and self.process.stdin:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.write("QUIT\n")
                self.process.stdin.flush()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@contextlib.contextmanager
def loadgen(config: dict[str, Any]) -> Iterator[LoadGen]:
    generator = LoadGen(config)
    try:
        yield generator
    finally:
        generator.close()
