"""A real ``redis-server`` per test session (or per test, to stop and restart it), on a free port.

Tests never touch the machine's own Redis or each other's keys: each test gets its own
key prefix on a server the suite started in a temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.support import WAIT, require_program

REDIS_SERVER = os.environ.get("JOBCAST_REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"


def require_redis_server() -> None:
    hint = "apt-get install -y redis-server (or set JOBCAST_REDIS_SERVER)"
    require_program(REDIS_SERVER, f"redis-server not found at {REDIS_SERVER}: {hint}")


class RedisServer:
    """One redis-server process in ``directory``; ``stop`` and ``start`` keep its port."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url(self, prefix: str | None = None) -> str:
        """A store URL with a key prefix of its own."""
        return f"{self.base_url}?prefix={prefix or 'test-' + uuid.uuid4().hex[:10]}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(
            # No persistence: a restart comes back empty, the hardest case for clients.
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],  # fmt: skip
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait_until_ready()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP the server, as a hung primary or a long fork looks to clients: connections open, no answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.process.send_signal(signal.SIGCONT)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + WAIT
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            while True:
                assert self.process is not None and self.process.poll() is None, "redis-server exited at start"
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)  # polling a port that is about to open; nothing to wait on
        finally:
            client.close()


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    from tests.servers import free_port

    require_redis_server()
    server = RedisServer(directory, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
