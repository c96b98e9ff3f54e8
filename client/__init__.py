"""The jobcast client: follow a project's jobs live, and start, cancel and inspect them.

::

    from jobcast.client import JobcastClient, subscribe

    async with subscribe("http://127.0.0.1:8000", "acme") as events:
        async for message in events:
            print(message["type"], message.get("seq"))

Without an event loop (a Flask view, a script), :class:`Client` does the same::

    from jobcast.client import Client

    with Client("http://127.0.0.1:8000") as jobs:
        job = jobs.wait(jobs.refresh("acme", "financial").job["job_id"], timeout=60)

See ``docs/client.md``. The ``jobcast watch | refresh | status | cancel`` commands
(:mod:`client.cli`) are built on this.
"""

from .backoff import Reconnect
from .cursor import FINAL_STATES, Cursor
from .errors import ClientError, InvalidURL, ProtocolError, ServerRefused, ServerUnreachable, WaitTimedOut
from .http import JobcastClient, StartedJob
from .output import Outputs
from .subscribe import Subscription, Transport, subscribe
from .sync import Client, Watch

__all__ = [
    "FINAL_STATES",
    "Client",
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
    "WaitTimedOut",
    "Watch",
    "subscribe",
]
