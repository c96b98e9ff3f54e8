"""Helpers for attacking a real ``jobcast serve`` that has a secret: tokens, and raw answers.

Every token a test mints goes through :class:`Tokens`, so a test can grep the server's
log for all of them at the end.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import jwt
import websockets
from websockets.asyncio.client import ClientConnection

from jobcast.server.auth import TokenSigner
from tests.support import WAIT

SECRET = "s3cret-for-tests-only-0123456789-abcdef"
OTHER_SECRET = "another-secret-entirely-9876543210-xyz"
READ_RUN = ("read", "run")


@dataclasses.dataclass
class Tokens:
    """Mints tokens with the server's secret (or a forger's), and remembers every one."""

    secret: str = SECRET
    minted: list[str] = dataclasses.field(default_factory=list)

    def mint(self, projects: Sequence[str] = ("acme",), rights: Sequence[str] = READ_RUN, ttl: float = 600) -> str:
        return self._keep(TokenSigner(self.secret).mint(projects, rights, ttl, time.time()))

    def expired(self, projects: Sequence[str] = ("acme",)) -> str:
        return self._keep(TokenSigner(self.secret).mint(projects, READ_RUN, 60, time.time() - 3600))

    def forged(self, projects: Sequence[str] = ("*",)) -> str:
        """Signed with another secret, claiming every project."""
        return self._keep(TokenSigner(OTHER_SECRET).mint(projects, READ_RUN, 600, time.time()))

    def tampered(self) -> str:
        """A real token whose payload was edited to claim every project; the signature no longer matches."""
        prefix, _, signature = self.mint(("acme",)).split(".")
        payload = TokenSigner(OTHER_SECRET).mint(("*",), READ_RUN, 600, time.time()).split(".")[1]
        return self._keep(f"{prefix}.{payload}.{signature}")

    def unsigned(self, projects: Sequence[str] = ("*",)) -> str:
        """A real token's claims re-sent with ``alg: none`` and no signature."""
        claims = jwt.decode(self.mint(projects), options={"verify_signature": False})
        header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        return self._keep(f"{header}.{body}.")

    def _keep(self, token: str) -> str:
        self.minted.append(token)
        return token


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclasses.dataclass(frozen=True)
class Answer:
    """What the server answered: the status (101 for an accepted WebSocket), the JSON body, the headers."""

    status: int
    body: dict[str, Any] | None
    headers: dict[str, str]
    text: str = ""

    @property
    def code(self) -> str | None:
        return None if self.body is None else self.body.get("error", {}).get("code")


async def answer(url: str, method: str, path: str, headers: dict[str, str] | None = None) -> Answer:
    """One request (``WS`` for a WebSocket handshake); streams are closed once their status is known."""
    if method == "WS":
        return await ws_answer(url, path, headers or {})
    async with httpx.AsyncClient(base_url=url, timeout=WAIT) as http:
        async with http.stream(method, path, headers=headers) as response:
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                return Answer(response.status_code, None, dict(response.headers))
            text = (await response.aread()).decode()
    return Answer(response.status_code, _json(text), dict(response.headers), text)


async def ws_answer(url: str, path: str, headers: dict[str, str], subprotocols: Sequence[str] | None = None) -> Answer:
    try:
        async with ws_connect(url, path, headers, subprotocols) as socket:
            accepted = dict(socket.response.headers) if socket.response else {}
            return Answer(101, None, {k.lower(): v for k, v in accepted.items()})
    except websockets.InvalidStatus as refused:
        body = bytes(refused.response.body or b"").decode()
        return Answer(refused.response.status_code, _json(body), dict(refused.response.headers), body)


@contextlib.asynccontextmanager
async def ws_connect(
    url: str,
    path: str,
    headers: dict[str, str] | None = None,
    subprotocols: Sequence[str] | None = None,
    **options: Any,
) -> AsyncIterator[ClientConnection]:
    ws_url = "ws" + url.removeprefix("http") + path
    protocols = None if subprotocols is None else [websockets.Subprotocol(p) for p in subprotocols]
    async with websockets.connect(
        ws_url, additional_headers=headers or {}, subprotocols=protocols, open_timeout=WAIT, **options
    ) as socket:
        yield socket


async def receive(socket: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await socket.recv())
    return message


def _json(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
