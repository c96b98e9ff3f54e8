"""The ``jobcast`` command: ``serve`` and ``token`` from the server, ``watch``, ``refresh``, ``status``
and ``cancel`` from the client. It sits above both, so neither imports the other.

``main(argv=None)``, so tests can call it directly.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Sequence

from .client import cli as client_cli
from .server import cli as server_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobcast",
        description="Run slow agent jobs behind a web app and push their progress live.",
        epilog=client_cli.HELP,  # the client commands' exit codes
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jobcast {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server_cli.add_commands(commands)  # serve, token
    client_cli.add_commands(commands)  # watch, refresh, status, cancel
    return parser


def version() -> str:
    try:
        return importlib.metadata.version("jobcast")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    parsed = build_parser().parse_args(args)
    if parsed.command in server_cli.COMMANDS:
        return server_cli.run(parsed, args[1:])
    return client_cli.run(parsed)
