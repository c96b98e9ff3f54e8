"""A reverse proxy that serves a backend under a path prefix and strips it, as nginx's
``location /jobcast/ { proxy_pass http://backend/; }`` does: real sockets, HTTP/1.1
keep-alive and WebSocket upgrades, in the test's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator


@dataclasses.dataclass
class PrefixProxy:
    prefix: str
    backend_port: int
    port: int = 0
    #: every request line the proxy received, before it stripped the prefix
    requests: list[str] = dataclasses.field(default_factory=list)
    #: every connection's tasks, held: asyncio keeps only weak references to tasks, and a
    #: connection whose sockets are closing is a garbage cycle a collection would destroy
    tasks: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)

    def _hold(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        current = asyncio.current_task()
        if current is not None:
            self._hold(current)
        try:
            backend_reader, backend_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
        except OSError:
            client_writer.close()
            return
        answers = self._hold(asyncio.create_task(_pipe(backend_reader, client_writer)))
        try:
            await self._forward_requests(client_reader, backend_writer)
            with contextlib.suppress(Exception):
                await answers
        finally:  # also when cancelled: an unclosed writer warns once the loop is gone
            backend_writer.close()
            client_writer.close()

    async def _forward_requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Each request's head rewritten (prefix stripped), its body copied; after an upgrade, raw bytes."""
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.write_eof()
                return
            line, _, headers = head.decode("latin-1").partition("\r\n")
            method, target, version = line.split(" ", 2)
            self.requests.append(f"{method} {target}")
            if target == self.prefix or target.startswith(self.prefix + "/") or target.startswith(self.prefix + "?"):
                target = target[len(self.prefix) :] or "/"
            elif not target.startswith(self.prefix):
                target = "/__outside_the_prefix__" + target  # the backend answers 404, as a real proxy would
            writer.write(f"{method} {target} {version}\r\n{headers}".encode("latin-1"))
            lowered = headers.lower()
            if "upgrade: websocket" in lowered:
                await _pipe(reader, writer)
                return
            length = _content_length(lowered)
            if length:
                writer.write(await reader.readexactly(length))
            await writer.drain()


def _content_length(headers: str) -> int:
    for line in headers.split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip() == "content-length":
            return int(value.strip())
    return 0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@contextlib.asynccontextmanager
async def prefix_proxy(prefix: str, backend_port: int) -> AsyncIterator[PrefixProxy]:
    proxy = PrefixProxy(prefix, backend_port)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    async with server:
        try:
            yield proxy
        finally:
            server.close()
            for task in set(proxy.tasks):
                task.cancel()
            await asyncio.gather(*proxy.tasks, return_exceptions=True)
