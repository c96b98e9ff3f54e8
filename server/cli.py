"""The ``jobcast`` command. ``main(argv=None)`` so tests can call it directly."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from client import cli as client_cli

from .errors import ConfigError
from .settings import Settings, build_serve_parser

if TYPE_CHECKING:
    import uvicorn

logger = logging.getLogger("jobcast")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobcast",
        description="Run slow agent jobs behind a web app and push their progress live.",
        epilog=client_cli.HELP,  # the client commands' exit codes
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="start the server", description="Start the jobcast server.")
    build_serve_parser(serve)
    client_cli.add_commands(commands)  # watch, refresh, status, cancel
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    parsed = parser.parse_args(args)
    if parsed.command == "serve":
        return serve(args[1:])
    if parsed.command in client_cli.COMMANDS:
        return client_cli.run(parsed)
    parser.error(f"unknown command {parsed.command!r}")
    return 2


def serve(argv: Sequence[str]) -> int:
    try:
        settings = Settings.from_args(argv)
        from .app import create_app

        app = create_app(settings)
    except ConfigError as exc:
        print(f"jobcast: error: {exc}", file=sys.stderr)
        return 2
    return run_server(app, settings)


def run_server(app: object, settings: Settings) -> int:

    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    graceful_server(uvicorn_config(app, settings)).run()
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


def uvicorn_config(app: object, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """How jobcast runs on uvicorn: its WebSocket protocol, pings and 64 KiB inbound limit."""
    import uvicorn

    from .protocol import JobcastWebSocketProtocol

    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "ws": JobcastWebSocketProtocol,
        "ws_ping_interval": settings.ping_interval,
        "ws_ping_timeout": settings.ping_timeout,
        "ws_max_size": 64 * 1024,
        "ws_per_message_deflate": False,
        # SSE streams and long-polls never end by themselves; without a limit uvicorn would wait on them forever.
        "timeout_graceful_shutdown": settings.shutdown_grace,
        "log_level": settings.log_level,
        **overrides,
    }
    return uvicorn.Config(app, **options)  # type: ignore[arg-type]


def _exit_despite_stuck_agents() -> None:
    """An agent thread that ignores cancellation would keep the process alive; don't wait for it."""
    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if stuck:
        logger.warning("exiting with %d agent thread(s) still running", len(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
