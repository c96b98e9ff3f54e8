"""A minimal WebSocket client as an asyncio Protocol: no task per connection.

The load generator must be cheaper than the servers it measures, or it measures
itself. Server frames are unmasked text frames; pings are answered; nothing else of
RFC 6455 is needed here.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Callable

OPCODE_TEXT, OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG = 1, 8, 9, 10


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (the mask is all zeros: masking is required, secrecy is not)."""
    header = bytes([0x80 | opcode])
    length = len(payload)
    if length < 126:
        header += bytes([0x80 | length])
    elif length < 65536:
        header += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        header += bytes([0x80 | 127]) + struct.pack("!Q", length)
    return header + b"\x00\x00\x00\x00" + payload


class RawWebSocket(asyncio.Protocol):
    def __init__(self, path: str, host: str, on_text: Callable[[RawWebSocket, bytes], None]) -> None:
        self.path = path
        self.host = host
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._handshaken = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                # as browsers offer it; every server measured declines it (compression is off by default)
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._handshaken:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self._buffer[: self._buffer.find(b"\r\n")])
            del self._buffer[: end + 4]
            if b" 101 " not in status:
                self.opened.set_exception(ConnectionError(status.decode(errors="replace")))
                return
            self._handshaken = True
            self.opened.set_result(None)
        self._parse_frames()

    def _parse_frames(self) -> None:
        buffer = self._buffer
        while len(buffer) >= 2:
            opcode = buffer[0] & 0x0F
            length = buffer[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length = struct.unpack_from("!H", buffer, 2)[0]
                offset = 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length = struct.unpack_from("!Q", buffer, 2)[0]
                offset = 10
            if len(buffer) < offset + length:
                return
            payload = bytes(buffer[offset : offset + length])
            del buffer[: offset + length]
            self._on_frame(opcode, payload)

    def _on_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == OPCODE_TEXT:
            self.on_text(self, payload)
        elif opcode == OPCODE_PING:
            self.send_frame(OPCODE_PONG, payload)
        elif opcode == OPCODE_CLOSE and self.transport:
            self.send_frame(OPCODE_CLOSE, payload[:2])
            self.transport.close()

    def send_frame(self, opcode: int, payload: bytes) -> None:
        if self.transport and not self.transport.is_closing():
            self.transport.write(client_frame(opcode, payload))

    def send_text(self, text: str) -> None:
        self.send_frame(OPCODE_TEXT, text.encode())

    def close(self) -> None:
        if self.transport and not self.transport.is_closing():
            self.send_frame(OPCODE_CLOSE, struct.pack("!H", 1000))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)


async def connect(port: int, path: str, on_text: Callable[[RawWebSocket, bytes], None]) -> RawWebSocket:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: RawWebSocket(path, f"127.0.0.1:{port}", on_text), "127.0.0.1", port
    )
    await asyncio.wait_for(protocol.opened, 60)
    return protocol
