"""Real ``jobcast serve`` processes for end-to-end tests, on free ports, always cleaned up."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.support import WAIT, eventually


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def jobcast_command() -> list[str]:
    """The installed console script, as a user runs it."""
    script = Path(sys.executable).with_name("jobcast")
    if script.exists():
        return [str(script)]
    found = shutil.which("jobcast")
    assert found, "the jobcast console script is not installed (pip install -e '.[test]')"
    return [found]


class JobcastServer:
    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        port: int | None = None,
        cwd: Path | None = None,
        nofile: int | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        environ = {**os.environ, **(env or {})}
        self.process = subprocess.Popen(
            self.command_line(command or jobcast_command(), args),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environ,
            cwd=cwd,
            # ``ulimit -n``: the file descriptors the server may hold, as an operator's limit sets them
            preexec_fn=None if nofile is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)),
        )

    def command_line(self, command: Sequence[str], args: Sequence[str]) -> list[str]:
        return [*command, "serve", "--port", str(self.port), *args]

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self) -> None:
        eventually(self._ready, what=f"jobcast on port {self.port} ready")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"jobcast exited with {self.process.returncode}:\n{self.log}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False  # its port is about to open

    def kill(self) -> None:
        """Die like a crash: SIGKILL, no shutdown code runs."""
        self.process.kill()
        self.process.wait(WAIT)
        self._log.close()

    def stop(self) -> int:
        """Stop like an operator: SIGTERM, then wait for a clean exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(WAIT)
        self._log.close()
        return self.process.returncode


@contextlib.contextmanager
def jobcast_server(
    args: Sequence[str], log_path: Path, env: dict[str, str] | None = None, **options: Any
) -> Iterator[JobcastServer]:
    """A ready :class:`JobcastServer` (same options), stopped afterwards whatever the test did."""
    server = JobcastServer(args, log_path, env, **options)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


class JobcastWorker(JobcastServer):
    """A real ``jobcast worker`` process: no port; ready once it logs so. Stopped and killed like a server."""

    def command_line(self, command: Sequence[str], args: Sequence[str]) -> list[str]:
        return [*command, "worker", *args]

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"jobcast worker exited with {self.process.returncode}:\n{self.log}")
            return "jobcast worker ready" in self.log

        eventually(ready, what="jobcast worker ready")


@contextlib.contextmanager
def jobcast_worker(args: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> Iterator[JobcastWorker]:
    worker = JobcastWorker(args, log_path, env)
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()
