"""The jobcast client: follow a project's jobs live, and start, cancel and inspect them.

::

    from jobcast.client import JobcastClient, subscribe

    async with subscribe("http://127.0.0.1:8000", "acme") as events:
        async for message in events:
            print(message["type"], message.get("seq"))

See ``docs/client.md``. The ``jobcast watch | refresh | status | cancel`` commands
(:mod:`client.cli`) are built on this.
"""

from .backoff import Reconnect
from .cursor import FINAL_STATES, Cursor
from .errors import ClientError, InvalidURL, ProtocolError, ServerRefused, ServerUnreachable
from .http import JobcastClient, StartedJob
from .output import Outputs
from .subscribe import Subscription, Transport, subscribe

__all__ = [
    "FINAL_STATES",
    "ClientError",
    "Cursor",
    "InvalidURL",
    "JobcastClient",
    "Outputs",
    "ProtocolError",
    "Reconnect",
    "ServerRefused",
    "ServerUnreachable",
    "StartedJob",
    "Subscription",
    "Transport",
    "subscribe",
]
