"""The ``jobcast`` command. ``main(argv=None)`` so tests can call it directly."""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from client import cli as client_cli

from . import logs
from .auth import ALL_PROJECTS, RIGHTS, TokenSigner, parse_rights, parse_ttl
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
    parser.add_argument("--version", action="version", version=f"jobcast {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="start the server", description="Start the jobcast server.")
    build_serve_parser(serve)
    _add_token_command(commands)
    client_cli.add_commands(commands)  # watch, refresh, status, cancel
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("jobcast")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _add_token_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = commands.add_parser(
        "token",
        help="mint an access token",
        description="Mint an access token for a server started with the same secret. Prints only the token.",
    )
    token.add_argument("--secret", help="the server's secret (env JOBCAST_SECRET; prefer the variable)")
    token.add_argument(
        "--project",
        dest="projects",
        action="append",
        required=True,
        metavar="PROJECT",
        help=f"a project the token covers; repeat for more, or {ALL_PROJECTS!r} for every project",
    )
    token.add_argument(
        "--rights",
        type=_argparse_type(parse_rights),
        default=("read",),
        help=f"comma-separated, from {', '.join(RIGHTS)} (default read)",
    )
    token.add_argument(
        "--ttl", type=_argparse_type(parse_ttl), default=3600.0, help="lifetime: 90s, 30m, 1h, 7d (default 1h)"
    )


def _argparse_type(parse: Any) -> Any:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    parsed = parser.parse_args(args)
    if parsed.command == "serve":
        return serve(args[1:])
    if parsed.command == "token":
        return mint_token(parsed)
    if parsed.command in client_cli.COMMANDS:
        return client_cli.run(parsed)
    parser.error(f"unknown command {parsed.command!r}")
    return 2


def serve(argv: Sequence[str]) -> int:
    """Check everything, then own the store, then the port, and only then start the app and its recovery."""
    try:
        settings = Settings.from_args(argv)
        from .app import create_app, store_for
        from .workers import check_shareable, listen, run_workers

        check_shareable(settings)
        # Agents, the store URL and the auth settings are checked here, before any process starts.
        store = store_for(settings)
        app = create_app(settings, store=store)
        store.claim(serving=f"http://{_host_port(settings.host, settings.port)}")
    except ConfigError as exc:
        print(f"jobcast: error: {exc}", file=sys.stderr)
        return 2
    try:
        listener = listen(settings)
    except OSError as exc:
        # Nothing in the store has been read or recovered yet, so a port clash changes nothing there.
        address = _host_port(settings.host, settings.port)
        print(f"jobcast: error: cannot listen on {address}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if settings.workers > 1:
        return run_workers(settings, listener)  # each worker builds its own app from the same settings
    return run_server(app, settings, sockets=[listener])


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def mint_token(options: argparse.Namespace) -> int:
    """``jobcast token``: print one token and nothing else."""
    try:
        secret = options.secret or Settings.from_env().secret
        if not secret:
            raise ConfigError("no secret: pass --secret or set JOBCAST_SECRET")
        token = TokenSigner(secret).mint(options.projects, options.rights, options.ttl, time.time())
    except (ConfigError, ValueError) as exc:
        print(f"jobcast: error: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def run_server(app: object, settings: Settings, sockets: list[socket.socket] | None = None) -> int:
    """Serve ``app`` until a signal; on ``sockets`` already bound (a worker of ``--workers``), if given."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    config = uvicorn_config(app, settings)
    if not settings.secret:
        _warn_open(settings)
    if sockets:
        host, port = sockets[0].getsockname()[:2]
        logger.info("jobcast listening on http://%s (press CTRL+C to quit)", _host_port(host, port))
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
    from .protocol import JobcastWebSocketProtocol

    guard = ConnectionGuard(settings.header_timeout, settings.max_pending_connections)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        # Request headers get a deadline, and connections waiting for theirs a cap (server.connections).
        "http": functools.partial(GuardedH11Protocol, guard=guard),
        "ws": JobcastWebSocketProtocol,
        "ws_ping_interval": settings.ping_interval,
        "ws_ping_timeout": settings.ping_timeout,
        "ws_max_size": 64 * 1024,
        "ws_per_message_deflate": settings.ws_compression,
        # SSE streams and long-polls never end by themselves; without a limit uvicorn would wait on them forever.
        "timeout_graceful_shutdown": settings.shutdown_grace,
        "log_level": settings.log_level,
        **overrides,
    }
    config = uvicorn.Config(app, **options)  # type: ignore[arg-type]
    logs.install(settings.secret)  # uvicorn set up its log handlers just now
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
