"""Server settings: read once, from the command line and ``JOBCAST_*`` variables.

This is the only module that looks at the environment. A command-line option wins
over its variable, and the variable wins over the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import ConfigError
from .validation import decimal_number, whole_number

DEFAULT_AGENTS = ("jobcast.agents.builtin:FinancialAgent", "jobcast.agents.builtin:PerformanceAgent")


def _int(text: str) -> int:
    value = whole_number(text.strip())
    if value is None:
        raise ValueError("must be a whole number (digits 0-9)")
    return value


def _float(text: str) -> float:
    value = decimal_number(text.strip())
    if value is None:
        raise ValueError("must be a number like 2 or 0.5 (digits 0-9)")
    return value


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _port(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


def _non_negative_int(text: str) -> int:
    return _int(text)  # no sign is accepted, so never below 0


def _positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise ValueError("must be greater than 0")
    return value


def _non_negative_float(text: str) -> float:
    return _float(text)  # no sign is accepted, so never below 0


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _log_level(text: str) -> str:
    level = text.lower()
    if level not in {"critical", "error", "warning", "info", "debug"}:
        raise ValueError("must be one of debug, info, warning, error, critical")
    return level


def _log_format(text: str) -> str:
    form = text.strip().lower()
    if form not in {"text", "json"}:
        raise ValueError("must be text or json")
    return form


def _agent_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _origin_list(text: str) -> tuple[str, ...]:
    origins = _agent_list(text)
    for origin in origins:
        scheme, sep, rest = origin.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
            raise ValueError(f"{origin!r} is not an origin like https://example.com:8443")
    return origins


def _root_path(text: str) -> str:
    path = text.strip().rstrip("/")
    if path and (not path.startswith("/") or not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", path)):
        raise ValueError("a root path is like /jobcast: a '/' and letters, digits, '.', '_', '~' or '-'")
    return path


def option(default: Any, parse: Callable[[str], Any], help: str, *, flag: bool = False, secret: bool = False) -> Any:
    """One setting, declared once: its default, how its text parses, its help. The name gives
    ``--the-name`` and ``JOBCAST_THE_NAME``. ``flag``: a switch (``--flag``; true/false in the
    environment). ``secret``: never shown, in a repr or a help text."""
    metadata = {"parse": parse, "help": help, "flag": flag, "secret": secret}
    return dataclasses.field(default=default, repr=not secret, metadata=metadata)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Every server setting. The engine, the hub, the transports and the stores read theirs from here."""

    host: str = option("127.0.0.1", str, "address to bind")
    port: int = option(8000, _port, "port to bind (0 picks a free one)")
    store: str = option(
        "sqlite:///jobcast.db", str, "where jobs live: sqlite:///path.db, redis://host:6379/0 or memory://"
    )
    #: ``--agent`` repeated, or ``JOBCAST_AGENTS`` comma-separated
    agents: tuple[str, ...] = option(DEFAULT_AGENTS, _agent_list, "agents to load, as module:attribute")
    workers: int = option(1, _positive_int, "server processes; more than 1 needs a redis:// store")
    threads: int = option(
        8, _non_negative_int, "agent jobs that run at once in each process (0: run none here; needs redis://)"
    )
    lease_seconds: float = option(
        15.0, _positive_float, "how long a job's lease lasts unless its process renews it (redis://)"
    )
    job_timeout: float = option(600.0, _positive_float, "seconds before a job times out, unless its agent sets one")
    demo_seconds: float = option(20.0, _non_negative_float, "how long the built-in demo agents take")
    log_level: str = option("info", _log_level, "debug, info, warning or error")
    log_format: str = option("text", _log_format, "text (one readable line) or json (one JSON object per line)")
    progress_interval: float = option(1.0, _positive_float, "seconds between progress events of a running job")
    history: int = option(1000, _positive_int, "events per project a client can resume from")
    ping_interval: float = option(20.0, _positive_float, "seconds between WebSocket pings")
    ping_timeout: float = option(20.0, _positive_float, "seconds to wait for a pong before dropping the peer")
    send_buffer: int = option(1000, _positive_int, "transitions queued for one slow subscriber before it is closed")
    sse_keepalive: float = option(15.0, _positive_float, "seconds between keep-alive comments on an idle SSE stream")
    max_output_bytes: int = option(
        1024 * 1024, _positive_int, "bytes of streamed output kept per job; past it the output is cut"
    )
    cancel_grace: float = option(
        10.0, _positive_float, "seconds a running agent has to stop after a cancel before it is ended anyway"
    )
    shutdown_grace: float = option(
        3.0, _positive_float, "seconds open streams and long-polls get to finish at shutdown"
    )
    allowed_origins: tuple[str, ...] = option(
        (), _origin_list, "comma-separated browser origins allowed besides the server's own"
    )
    secret: str | None = option(None, str, "signing key for access tokens; without one jobcast runs open", secret=True)
    jwt_public_key: str | None = option(
        None, str, "PEM public key file (RSA for RS256, P-256 for ES256) of an identity service that mints tokens"
    )
    jwt_audience: str | None = option(None, str, "the 'aud' every token must carry")
    jwt_issuer: str | None = option(None, str, "the 'iss' every token must carry")
    require_auth: bool = option(False, _boolean, "refuse to start without --secret or --jwt-public-key", flag=True)
    max_connections_per_client: int = option(50, _positive_int, "open WebSockets and streams per client address")
    starts_per_minute: int = option(30, _positive_int, "job starts one token may make per minute (with --secret)")
    max_subscriptions: int = option(100, _positive_int, "projects one multiplexed WebSocket (/ws) may follow at once")
    ws_messages_per_second: int = option(20, _positive_int, "messages a WebSocket client may send per second")
    max_queued: int = option(
        100, _positive_int, "queued jobs (across every process sharing the store) before refusing with queue_full"
    )
    max_running_per_project: int = option(0, _non_negative_int, "running jobs of one project at once (0: no limit)")
    max_running_per_user: int = option(
        0, _non_negative_int, "running jobs one user (token subject, else client address) has at once (0: no limit)"
    )
    ws_compression: bool = option(False, _boolean, "offer permessage-deflate on WebSockets", flag=True)
    root_path: str = option(
        "", _root_path, "the path prefix a proxy serves jobcast under, like /jobcast (the proxy strips it)"
    )
    app_dir: str = option(".", str, "folder that --agent modules are imported from, before installed packages")
    header_timeout: float = option(5.0, _positive_float, "seconds a connection has to send a request's headers")
    max_pending_connections: int = option(
        0,
        _non_negative_int,
        "connections waiting for their request headers before the oldest is closed (0: half the file limit, "
        "at most 1000)",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``JOBCAST_*`` variables alone, as the ASGI factory uses them."""
        return cls(**_values_from_env(os.environ if environ is None else environ))

    @classmethod
    def from_args(cls, argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
        """Settings for ``jobcast serve``: options first, then variables, then defaults."""
        values = _values_from_env(os.environ if environ is None else environ)
        parsed = build_serve_parser().parse_args(list(argv))
        values.update({key: value for key, value in vars(parsed).items() if value is not None})
        if parsed.agents:
            values["agents"] = tuple(parsed.agents)
        return cls(**values)


def _env_name(option: str) -> str:
    return "JOBCAST_" + option.upper()


def _values_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field in dataclasses.fields(Settings):
        raw = environ.get(_env_name(field.name))
        if raw is not None and raw != "":
            values[field.name] = _parse_env(field.name, field.metadata["parse"], raw)
    return values


def _parse_env(name: str, parse: Callable[[str], Any], raw: str) -> Any:
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{_env_name(name)}={raw!r}: {exc}") from None


def argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` as an argparse type: its ValueError becomes a usage error that names the text once."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            reason = str(exc)
            raise argparse.ArgumentTypeError(reason if repr(text) in reason else f"{text!r}: {reason}") from None

    return convert


def build_serve_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Options of ``jobcast serve``, one per setting. Defaults are None so that variables can fill them."""
    parser = parser or argparse.ArgumentParser(prog="jobcast serve")
    for field in dataclasses.fields(Settings):
        if field.name == "agents":
            _add_agent_option(parser, field)
        elif field.metadata["flag"]:
            parser.add_argument(
                _flag(field.name),
                dest=field.name,
                action="store_const",
                const=True,
                default=None,
                help=f"{field.metadata['help']} (env {_env_name(field.name)}=true)",
            )
        else:
            shown = "none" if field.default in ((), None) or field.metadata["secret"] else field.default
            parser.add_argument(
                _flag(field.name),
                dest=field.name,
                type=argparse_type(field.metadata["parse"]),
                default=None,
                help=f"{field.metadata['help']} (env {_env_name(field.name)}, default {shown})",
            )
    return parser


def _add_agent_option(parser: argparse.ArgumentParser, field: dataclasses.Field[Any]) -> None:
    parser.add_argument(
        "--agent",
        dest="agents",
        action="append",
        metavar="MODULE:ATTR",
        default=None,
        help=f"load an agent; repeat for more (env {_env_name(field.name)}, comma-separated; "
        "default: the built-in financial and performance agents)",
    )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
