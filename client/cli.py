"""``jobcast watch | refresh | status | cancel``: the parser, and errors turned into exit codes.

``main(argv=None)`` runs the client commands on their own; ``jobcast`` itself
(:mod:`server.cli`) adds them beside ``serve`` with :func:`add_commands` and runs them
with :func:`run`. The heavy imports (httpx, websockets, rich) wait until a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import textwrap
from collections.abc import Sequence

from .errors import ClientError, InvalidURL, ProtocolError, ServerRefused, ServerUnreachable, WaitTimedOut
from .exitcodes import HELP, ExitCode
from .settings import DEFAULT_URL, access_token, server_url

COMMANDS = ("watch", "refresh", "status", "cancel")
__all__ = ["COMMANDS", "HELP", "add_commands", "build_parser", "main", "run"]
TRANSPORTS = ("auto", "ws", "sse", "poll")


_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")  # ASCII digits only: float() also takes "١٠", "inf" and "1e3"


def _seconds(text: str) -> float:
    value = float(text) if _SECONDS.fullmatch(text) else -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds greater than 0")
    return value


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=server_url(),
        help=f"the server (env JOBCAST_URL, default {DEFAULT_URL})",
    )
    common.add_argument(
        "--token",
        default=access_token(),
        help="an access token from 'jobcast token', for a server with a secret (env JOBCAST_TOKEN; prefer the "
        "variable, which other users cannot see in the process list)",
    )
    common.add_argument(
        "--json", action="store_true", help="print newline-delimited JSON (events and final records) and nothing else"
    )
    return common


def _transport_option(parser: argparse.ArgumentParser) -> None:
    """Only for the commands that follow a project (watch, refresh); status and cancel make one request."""
    parser.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="auto",
        help="how to follow the project: WebSocket, Server-Sent Events, long-poll, or auto (the first that works)",
    )


def _agent_option(parser: argparse.ArgumentParser, *, required: bool, help: str) -> None:
    parser.add_argument(
        "--agent", dest="agents", action="append", default=[], metavar="AGENT", required=required, help=help
    )


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client commands to ``jobcast``'s subcommands."""
    common = _common_options()

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(
            name,
            parents=[common],
            help=summary,
            description=textwrap.fill(description, 80),
            epilog=HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument("project", metavar="PROJECT", help="the project id")
        return parser

    watch = command(
        "watch",
        "follow a project's jobs live",
        "Follow a project live: each agent's state, progress, elapsed time and step. Ctrl-C ends it (exit 130).",
    )
    _agent_option(watch, required=False, help="show only this agent; repeat for more (default: all)")
    _transport_option(watch)
    refresh = command(
        "refresh",
        "start agents' jobs and follow them until they finish",
        "Start (or join) each agent's job, follow exactly those jobs until each is final, and print each "
        "result's headline. The exit code is the worst outcome.",
    )
    _agent_option(refresh, required=True, help="the agent to run; repeat for more")
    _transport_option(refresh)
    refresh.add_argument("--no-wait", action="store_true", help="print the job ids and exit 0 at once")
    refresh.add_argument(
        "--priority",
        choices=("high", "normal", "low"),
        help="where the jobs go in the queue (the server's default: normal)",
    )
    refresh.add_argument(
        "--if-active",
        choices=("attach", "replace", "queue"),
        help="when the agent already has a job: join it (attach, the default), cancel it and start anew "
        "(replace), or queue one follow-up after it (queue)",
    )
    refresh.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help="exit 3 if the jobs are not all final after S seconds (they go on running on the server)",
    )
    command("status", "print each agent's job and last result", "Print each agent's current job and last result.")
    cancel = command("cancel", "cancel agents' queued or running jobs", "Cancel each agent's queued or running job.")
    _agent_option(cancel, required=True, help="the agent whose job to cancel; repeat for more")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobcast", epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    return run(options)


def run(options: argparse.Namespace) -> int:
    """Run a parsed client command: its exit code, and never a traceback."""
    try:
        return int(asyncio.run(_run(options)))
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return ExitCode.INTERRUPTED
    except ClientError as exc:
        return _failed(exc)
    except Exception as exc:  # a bug: one line, not a traceback
        _error(f"internal error: {type(exc).__name__}: {exc} (please report this)")
        return ExitCode.INTERNAL


async def _run(options: argparse.Namespace) -> int:
    from .commands import COMMANDS, Output

    return await COMMANDS[options.command](options, Output.for_options(options))


def _failed(error: ClientError) -> int:
    if isinstance(error, ServerRefused):
        _error(f"error: {error.message} ({error.code})")
    elif isinstance(error, InvalidURL):
        _error(f"error: --url: {error.message}")
    elif isinstance(error, ServerUnreachable | ProtocolError | WaitTimedOut):
        _error(error.message)
    else:
        _error(f"error: {error.message}")
    return error.exit_code


def _error(text: str) -> None:
    print(f"jobcast: {text}", file=sys.stderr, flush=True)


def _quiet_stdout() -> None:
    """The reader went away: point stdout at /dev/null so the exit's flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
