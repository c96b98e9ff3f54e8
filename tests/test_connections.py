"""Connections the way attackers and broken clients make them, against a real ``jobcast serve``.

Idle sockets and slowloris headers are closed after ``--header-timeout``; waiting sockets
are capped so real clients get in even under a small ``ulimit -n``; malformed frames and
bodies cost one log line each, a few a minute, never a traceback.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import websockets

from tests.servers import JobcastServer, jobcast_server
from tests.support import WAIT

pytestmark = pytest.mark.anyio

BASE = ["--store", "memory://", "--agent", "tests.agents:QuickAgent"]


@contextlib.contextmanager
def raw(server: JobcastServer) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    try:
        yield sock
    finally:
        sock.close()


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout fails the test)."""
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length, however the server's writes were split."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(4096)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *([0-9]+)", head)[1])  # type: ignore[index]
    while len(body) < length:
        body += sock.recv(4096)
    return head + b"\r\n\r\n" + body


def test_a_connection_that_sends_nothing_is_answered_408_and_closed(tmp_path: Path) -> None:
    """An idle connection gets 408 and is closed once --header-timeout has passed."""
    with jobcast_server([*BASE, "--header-timeout", "0.5"], tmp_path / "server.log") as server, raw(server) as sock:
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 Request Timeout\r\n")


def test_headers_sent_a_byte_at_a_time_are_cut_off(tmp_path: Path) -> None:
    """A slowloris client never finishes its headers: it is closed at the deadline, long before it is done."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"
    with jobcast_server([*BASE, "--header-timeout", "0.5"], tmp_path / "server.log") as server, raw(server) as sock:
        sent = 0
        with contextlib.suppress(OSError):  # the server closing under us is the point
            for byte in request:
                sock.sendall(bytes([byte]))
                sent += 1
                time.sleep(0.02)  # the attacker's pace: about 50 bytes a second, 5 s for the whole request
        assert sent < len(request)
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408")


def test_the_next_request_on_a_keep_alive_connection_has_the_same_deadline(tmp_path: Path) -> None:
    """After a good request, a connection that starts another and stalls is closed too."""
    with jobcast_server([*BASE, "--header-timeout", "0.5"], tmp_path / "server.log") as server, raw(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # and nothing more: uvicorn's keep-alive timer is off now
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408")


def test_real_clients_get_in_while_hundreds_of_idle_sockets_wait(tmp_path: Path) -> None:
    """Under ulimit -n 256, 400 idle sockets do not lock HTTP or WebSocket clients out; the cap logs a line."""
    log = tmp_path / "server.log"
    with jobcast_server([*BASE, "--header-timeout", "60"], log, nofile=256) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) for _ in range(400)]
        try:
            assert httpx.get(f"{server.url}/healthz", timeout=WAIT).status_code == 200
            anyio.run(_open_a_websocket, server.port)
        finally:
            for sock in idle:
                sock.close()
        cap_lines = [line for line in server.log.splitlines() if "--max-pending-connections" in line]
        assert 1 <= len(cap_lines) <= 5, cap_lines  # a few lines a minute, however many connections were closed
        assert "Traceback" not in server.log


async def _open_a_websocket(port: int) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/projects/p1", open_timeout=WAIT) as ws:
        with anyio.fail_after(WAIT):
            assert json.loads(await ws.recv())["type"] == "snapshot"


def _frame(payload: bytes, opcode: int = 1) -> bytes:
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def _handshake(sock: socket.socket) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws/projects/p1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")


def test_text_frames_that_are_not_utf8_close_with_1007_and_few_lines(tmp_path: Path) -> None:
    """Twenty sockets send invalid UTF-8: each is closed with 1007; the log has a few lines and no traceback."""
    with jobcast_server(BASE, tmp_path / "server.log") as server:
        for _ in range(20):
            with raw(server) as sock:
                _handshake(sock)
                sock.sendall(_frame(b"\xff\xfe"))
                received = read_until_closed(sock)
                close = received[received.rindex(b"\x88") :]  # the close frame: opcode 8, then the code
                assert int.from_bytes(close[2:4], "big") == 1007
        server.stop()
        lines = [line for line in server.log.splitlines() if "not UTF-8" in line]
        assert 1 <= len(lines) <= 5 and "Traceback" not in server.log


def test_a_malformed_chunked_body_after_an_early_answer_costs_one_line(tmp_path: Path) -> None:
    """A broken chunked body is answered 400 once; the app's own answer is dropped without a traceback."""
    body = b"zz\r\ngarbage\r\n0\r\n\r\n"
    with jobcast_server(BASE, tmp_path / "server.log") as server:
        for _ in range(20):
            with raw(server) as sock:
                sock.sendall(b"POST /api/nothing HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
                assert read_until_closed(sock).startswith(b"HTTP/1.1 400")
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        server.stop()
        assert "Traceback" not in server.log and "unhandled error" not in server.log
        assert 1 <= len([line for line in server.log.splitlines() if "Invalid HTTP request" in line]) <= 5


async def test_a_websocket_path_with_an_encoded_slash_is_refused_with_json(tmp_path: Path) -> None:
    """/ws/projects/a%2Fb matches no route: a JSON 404 not_found, not a bare 403."""
    with jobcast_server(BASE, tmp_path / "server.log") as server:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"ws://127.0.0.1:{server.port}/ws/projects/a%2Fb", open_timeout=WAIT)
    response = refused.value.response
    assert response.status_code == 404
    assert json.loads(response.body)["error"]["code"] == "not_found"


async def test_a_client_closing_with_1009_is_not_logged_as_an_oversized_message(tmp_path: Path) -> None:
    """The client's own close code 1009 is the client's business; only a message jobcast refused is logged."""
    with jobcast_server(BASE, tmp_path / "server.log") as server:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws/projects/p1", open_timeout=WAIT) as ws:
            await ws.recv()
            await ws.close(1009, "my own reasons")
        async with websockets.connect(
            f"ws://127.0.0.1:{server.port}/ws/projects/p1", open_timeout=WAIT, max_size=None
        ) as ws:
            await ws.recv()
            await ws.send("x" * (64 * 1024 + 1))
            with pytest.raises(websockets.ConnectionClosed):
                with anyio.fail_after(WAIT):
                    await ws.recv()
        server.stop()
        assert len([line for line in server.log.splitlines() if "a message over 64 KiB" in line]) == 1
