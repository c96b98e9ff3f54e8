"""Every error the client raises, with its data in attributes.

Foreign errors (httpx, websockets, OSError, bad JSON) are translated into these at the
boundary, in :mod:`client.http` and :mod:`client.transports`, with ``raise ... from``.

The tree::

    ClientError                  anything the client raises on purpose
    ├── InvalidURL               the server URL is not http:// or https://
    ├── ServerUnreachable        no answer: refused, reset, timed out, or gave up reconnecting
    ├── ServerRefused            code, message, status: the server answered with an error
    └── ProtocolError            the peer answered, but not like a jobcast server

    Internal to one connection attempt of a subscription (never escape ``subscribe``):

    TransportError
    ├── ConnectFailed            this transport could not connect; another may
    ├── TransportRefused         this transport's handshake was refused (a proxy, an Origin rule)
    └── StreamLost               an open stream ended or broke; reconnect with the cursor
"""

from __future__ import annotations

from typing import Any

from .exitcodes import ExitCode


class ClientError(Exception):
    """Base of every error the client raises on purpose. ``exit_code`` is what the ``jobcast`` command exits
    with for it, so a script or a view built on the library can answer the same way."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidURL(ClientError):
    exit_code = ExitCode.USAGE

    def __init__(self, url: str) -> None:
        super().__init__(f"{url!r} is not a server URL like http://127.0.0.1:8000")
        self.url = url


class ServerUnreachable(ClientError):
    exit_code = ExitCode.UNAVAILABLE

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the jobcast server at {url}: {reason}")
        self.url = url
        self.reason = reason


class ServerRefused(ClientError):
    """The server answered with an error: ``code`` is its machine-readable code."""

    exit_code = ExitCode.USAGE

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status

    def __repr__(self) -> str:
        return f"ServerRefused(code={self.code!r}, message={self.message!r}, status={self.status})"


class WaitTimedOut(ClientError, TimeoutError):
    """``Client.wait`` ran out of time before the job was final. The job goes on running on the server.

    ``job`` is its record as last seen. The CLI's exit code for it is 3, as for ``--timeout``.
    """

    exit_code = ExitCode.TIMED_OUT

    def __init__(self, job_id: str, timeout: float, job: dict[str, Any]) -> None:
        super().__init__(
            f"job {job_id} was still {job.get('status')} after {timeout:g} s; it goes on running on the server"
        )
        self.job_id = job_id
        self.timeout = timeout
        self.job = job


class ProtocolError(ClientError):
    exit_code = ExitCode.UNAVAILABLE


class TransportError(Exception):
    """One transport's failure during one connection attempt."""

    def __init__(self, transport: str, reason: str) -> None:
        super().__init__(f"{transport}: {reason}")
        self.transport = transport
        self.reason = reason


class ConnectFailed(TransportError):
    pass


class TransportRefused(TransportError):
    def __init__(self, transport: str, refusal: ServerRefused) -> None:
        super().__init__(transport, f"refused: {refusal.message} ({refusal.code})")
        self.refusal = refusal


class StreamLost(TransportError):
    pass
