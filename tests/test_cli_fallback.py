"""Automatic fallback as a user meets it: a proxy in front of the server that refuses WebSockets."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.servers import JobcastServer, jobcast_server
from tests.support import WAIT
from tests.test_cli import jobcast, records

REFUSAL = b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\nContent-Length: 13\r\nConnection: close\r\n\r\n"
REFUSAL += b"blocked here\n"
BLOCKS: dict[str, Callable[[bytes], bool]] = {
    "ws": lambda head: b"upgrade: websocket" in head.lower(),
    "sse": lambda head: b"/events/stream" in head.split(b"\r\n", 1)[0],
}


class BlockingProxy:
    """A reverse proxy, like some corporate ones: HTTP passes, what it blocks gets a 403 page.

    It asks the server to close each connection after its response, so every request
    arrives on a new connection and is inspected.
    """

    def __init__(self, upstream_port: int, blocks: list[str]) -> None:
        self.upstream_port = upstream_port
        self.blocks = [BLOCKS[name] for name in blocks]
        self.refused = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._start(self._accept)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() that close() alone would not
        self.listener.close()
        for thread in self._threads:
            thread.join(WAIT)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._start(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = _read_head(client)
            if head is None:
                return
            if any(block(head) for block in self.blocks):
                self.refused += 1
                client.sendall(REFUSAL)
                return
            with socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
                upstream.sendall(_closing(head))
                back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
                back.start()
                _pipe(client, upstream)
                with contextlib.suppress(OSError):
                    upstream.shutdown(socket.SHUT_RDWR)  # the client left: end a stream the server keeps open
                back.join(WAIT)


def _read_head(client: socket.socket) -> bytes | None:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = client.recv(65536)
        if not chunk:
            return None
        head += chunk
    return head


def _closing(head: bytes) -> bytes:
    """The request with ``Connection: close`` instead of keep-alive."""
    top, _, rest = head.partition(b"\r\n\r\n")
    lines = [line for line in top.split(b"\r\n") if not line.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + rest


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobcastServer]:
    args = ["--store", "memory://", "--agent", "tests.agents:QuickAgent"]
    with jobcast_server(args, tmp_path_factory.mktemp("fallback") / "server.log") as running:
        yield running


@contextlib.contextmanager
def proxy(server: JobcastServer, blocks: list[str]) -> Iterator[BlockingProxy]:
    blocking = BlockingProxy(server.port, blocks)
    try:
        yield blocking
    finally:
        blocking.close()


@pytest.mark.parametrize(("blocks", "used"), [(["ws"], "sse"), (["ws", "sse"], "poll")], ids=["no-ws", "no-ws-no-sse"])
def test_auto_falls_back_when_a_proxy_refuses_the_websocket(
    server: JobcastServer, tmp_path: Path, blocks: list[str], used: str
) -> None:
    """Behind a proxy that refuses WebSockets (and SSE), refresh falls back to SSE (or long-poll) and succeeds."""
    with proxy(server, blocks) as blocking:
        result = jobcast("refresh", f"behind-{used}", "--agent", "quick", "--json", "--url", blocking.url)
    assert result.returncode == 0, result.stderr
    lines = records(result.stdout)
    assert [r["job"]["status"] for r in lines if r["type"] == "job"] == ["queued", "running", "completed"]
    notes = result.stderr.splitlines()
    refused = "did not work (refused: HTTP 403 Forbidden, not a jobcast error (a proxy, or not jobcast?) (http_403))"
    assert notes == [
        *(f"jobcast: {name} {refused}; falling back" for name in blocks),
        f"jobcast: following over {used}",
    ]
    assert blocking.refused == len(blocks)
    with proxy(server, blocks) as blocking:
        forced = jobcast("refresh", "forced", "--agent", "quick", "--transport", "ws", "--url", blocking.url)
    assert forced.returncode == 2 and "HTTP 403 Forbidden" in forced.stderr and "Traceback" not in forced.stderr
