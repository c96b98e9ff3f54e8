"""The client's settings from the environment: ``JOBCAST_URL`` and ``JOBCAST_TOKEN``.

This is the only module of the client that looks at ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: where the CLI looks for a server when neither ``--url`` nor ``JOBCAST_URL`` says
DEFAULT_URL = "http://127.0.0.1:8000"


def server_url(environ: Mapping[str, str] | None = None) -> str:
    """``JOBCAST_URL`` if it is set and not empty, else :data:`DEFAULT_URL`."""
    value = (os.environ if environ is None else environ).get("JOBCAST_URL", "")
    return value.strip() or DEFAULT_URL


def access_token(environ: Mapping[str, str] | None = None) -> str | None:
    """``JOBCAST_TOKEN`` if it is set and not empty, else None (for a server that runs open)."""
    value = (os.environ if environ is None else environ).get("JOBCAST_TOKEN", "")
    return value.strip() or None
