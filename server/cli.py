"""``jobcast serve`` and ``jobcast token``: the server's side of the ``jobcast`` command (:mod:`jobcast.cli`)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from .auth import ALL_PROJECTS, RIGHTS, Claims, TokenSigner, parse_rights, parse_subject, parse_ttl
from .errors import ConfigError
from .runner import host_port, run_server
from .settings import Settings, argparse_type, build_serve_parser

COMMANDS = ("serve", "worker", "token")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve_parser = commands.add_parser("serve", help="start the server", description="Start the jobcast server.")
    build_serve_parser(serve_parser)
    worker_parser = commands.add_parser(
        "worker",
        help="run queued jobs from a shared store, without serving HTTP",
        description="Run queued jobs from a redis:// store shared with jobcast serve. Takes the server's options; "
        "--threads, --agent, --store and --shutdown-grace matter here.",
    )
    build_serve_parser(worker_parser)
    _add_token_command(commands)


def run(parsed: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run ``serve`` or ``worker`` (which read their own options from ``argv``, after the command) or ``token``."""
    if parsed.command == "serve":
        return serve(argv)
    if parsed.command == "worker":
        return worker(argv)
    return mint_token(parsed)


def worker(argv: Sequence[str]) -> int:
    from .worker import run_worker

    try:
        return run_worker(Settings.from_args(argv))
    except ConfigError as exc:
        return _refuse(str(exc), 2)


def _add_token_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = commands.add_parser(
        "token",
        help="mint an access token",
        description="Mint an access token (an HS256 JWT) for a server started with the same secret. "
        "Prints only the token.",
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
        type=argparse_type(parse_rights),
        default=("read",),
        help=f"comma-separated, from {', '.join(RIGHTS)} (default read)",
    )
    token.add_argument(
        "--ttl", type=argparse_type(parse_ttl), default=3600.0, help="lifetime: 90s, 30m, 1h, 7d (default 1h)"
    )
    token.add_argument("--audience", help="the 'aud' claim (default: the server's JOBCAST_JWT_AUDIENCE)")
    token.add_argument("--issuer", help="the 'iss' claim (default: the server's JOBCAST_JWT_ISSUER)")
    token.add_argument(
        "--subject",
        type=argparse_type(parse_subject),
        help="the user the token is for: jobs it starts record it as started_by, and per-user limits count it",
    )


def serve(argv: Sequence[str]) -> int:
    """Check everything, bind the port, own the store, and only then start the app and its recovery.

    A port clash leaves the store untouched (not even created); a second process on an
    embedded store's file is refused before it writes anything.
    """
    from .app import create_app
    from .store import store_for
    from .workers import check_shareable, listen, run_workers

    try:
        settings = Settings.from_args(argv)
        # Agents, the store URL and the auth settings are checked here, before any process starts.
        store = store_for(settings)
        check_shareable(settings, store)
        app = create_app(settings, store=store)
    except ConfigError as exc:
        return _refuse(str(exc), 2)
    try:
        listener = listen(settings)
    except OSError as exc:
        return _refuse(f"cannot listen on {host_port(settings.host, settings.port)}: {exc.strerror or exc}", 1)
    try:
        host, port = listener.getsockname()[:2]
        store.claim(serving=f"http://{host_port(host, port)}")
    except ConfigError as exc:
        listener.close()
        return _refuse(str(exc), 2)
    if settings.workers > 1:
        return run_workers(settings, listener)  # each worker builds its own app from the same settings
    return run_server(app, settings, sockets=[listener])


def _refuse(reason: str, code: int) -> int:
    print(f"jobcast: error: {reason}", file=sys.stderr)
    return code


def mint_token(options: argparse.Namespace) -> int:
    """``jobcast token``: print one token and nothing else."""
    try:
        server = Settings.from_env()
        secret = options.secret or server.secret
        if not secret:
            raise ConfigError("no secret: pass --secret or set JOBCAST_SECRET")
        expected = Claims(options.audience or server.jwt_audience, options.issuer or server.jwt_issuer)
        signer = TokenSigner(secret, expected)
        token = signer.mint(options.projects, options.rights, options.ttl, time.time(), options.subject)
    except (ConfigError, ValueError) as exc:
        print(f"jobcast: error: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0
