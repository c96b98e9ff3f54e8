"""How jobcast runs on uvicorn: its configuration, a graceful shutdown, and the serving loop.

``jobcast serve`` (:mod:`.cli`) and each worker of ``--workers`` (:mod:`.workers`) call
:func:`run_server`; tests call :func:`uvicorn_config` and :func:`graceful_server` to run
the app in their own event loop.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import threading
from typing import TYPE_CHECKING, Any

from . import logs
from .settings import Settings

if TYPE_CHECKING:
    import uvicorn

logger = logging.getLogger(__name__)


def run_server(app: object, settings: Settings, sockets: list[socket.socket] | None = None) -> int:
    """Serve ``app`` until a signal; on ``sockets`` already bound (a worker of ``--workers``), if given."""
    logs.configure(settings.log_level, settings.log_format)
    config = uvicorn_config(app, settings)
    if not settings.secret:
        _warn_open(settings)
    if sockets:
        host, port = sockets[0].getsockname()[:2]
        logger.info("jobcast listening on http://%s (press CTRL+C to quit)", host_port(host, port))
    graceful_server(config).run(sockets=sockets)
    _exit_despite_stuck_agents()
    return 0


def graceful_server(config: uvicorn.Config) -> uvicorn.Server:
    """A uvicorn server that tells open SSE streams and long-polls to end when shutdown begins.

    uvicorn waits for every open HTTP response before it stops, and those never end by
    themselves; ``--shutdown-grace`` remains the backstop if one does not end.
    """
    import uvicorn

    class GracefulServer(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            hub = getattr(self, "lifespan", None) and self.lifespan.state.get("hub")
            if hub is not None:
                hub.closing.set()
            await super().shutdown(sockets)

    return GracefulServer(config)


def _warn_open(settings: Settings) -> None:
    banner = "!" * 78
    logger.warning(banner)
    logger.warning("jobcast is running OPEN: there is no --secret (JOBCAST_SECRET), so anyone who can")
    logger.warning("reach %s:%s can read every project and start or cancel any job.", settings.host, settings.port)
    logger.warning("Set a secret to require tokens, and --require-auth to refuse to start without one.")
    logger.warning(banner)


def uvicorn_config(app: object, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """How jobcast runs on uvicorn: its HTTP and WebSocket protocols, pings, 64 KiB inbound limit, no token in a log."""
    import uvicorn

    from .connections import ConnectionGuard, GuardedH11Protocol
    from .uvicorn_ws import JobcastWebSocketProtocol
    from .wire import MAX_INBOUND_BYTES

    guard = ConnectionGuard(settings.header_timeout, settings.max_pending_connections)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        # Request headers get a deadline, and connections waiting for theirs a cap (server.connections).
        "http": functools.partial(GuardedH11Protocol, guard=guard),
        "ws": JobcastWebSocketProtocol,
        "ws_ping_interval": settings.ping_interval,
        "ws_ping_timeout": settings.ping_timeout,
        "ws_max_size": MAX_INBOUND_BYTES,
        "ws_per_message_deflate": settings.ws_compression,
        # SSE streams and long-polls never end by themselves; without a limit uvicorn would wait on them forever.
        "timeout_graceful_shutdown": settings.shutdown_grace,
        "log_level": settings.log_level,
        "root_path": settings.root_path,
        **overrides,
    }
    config = uvicorn.Config(app, **options)  # type: ignore[arg-type]
    logs.install(settings.secret, log_format=settings.log_format)  # uvicorn set up its log handlers just now
    return config


def _exit_despite_stuck_agents() -> None:
    """An agent thread that ignores cancellation would keep the process alive; don't wait for it."""
    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if stuck:
        logger.warning("exiting with %d agent thread(s) still running", len(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
