"""Server settings: read once, from the command line and ``JOBCAST_*`` variables.

This is the only module that looks at the environment. A command-line option wins
over its variable, and the variable wins over the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
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


def _agent_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _origin_list(text: str) -> tuple[str, ...]:
    origins = _agent_list(text)
    for origin in origins:
        scheme, sep, rest = origin.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
            raise ValueError(f"{origin!r} is not an origin like https://example.com:8443")
    return origins


@dataclasses.dataclass(frozen=True)
class _Option:
    name: str
    parse: Callable[[str], Any]
    help: str
    #: a switch: ``--flag`` on the command line, true/false in the environment
    flag: bool = False


_OPTIONS = (
    _Option("host", str, "address to bind"),
    _Option("port", _port, "port to bind (0 picks a free one)"),
    _Option("store", str, "where jobs live: sqlite:///path.db, redis://host:6379/0 or memory://"),
    _Option("workers", _positive_int, "server processes; more than 1 needs a redis:// store"),
    _Option("threads", _positive_int, "agent jobs that run at once in each process"),
    _Option("lease_seconds", _positive_float, "how long a job's lease lasts unless its process renews it (redis://)"),
    _Option("job_timeout", _positive_float, "seconds before a job times out, unless its agent sets one"),
    _Option("demo_seconds", _non_negative_float, "how long the built-in demo agents take"),
    _Option("log_level", _log_level, "debug, info, warning or error"),
    _Option("progress_interval", _positive_float, "seconds between progress events of a running job"),
    _Option("history", _positive_int, "events per project a client can resume from"),
    _Option("ping_interval", _positive_float, "seconds between WebSocket pings"),
    _Option("ping_timeout", _positive_float, "seconds to wait for a pong before dropping the peer"),
    _Option("send_buffer", _positive_int, "transitions queued for one slow subscriber before it is closed"),
    _Option("sse_keepalive", _positive_float, "seconds between keep-alive comments on an idle SSE stream"),
    _Option("shutdown_grace", _positive_float, "seconds open streams and long-polls get to finish at shutdown"),
    _Option("allowed_origins", _origin_list, "comma-separated browser origins allowed besides the server's own"),
    _Option("secret", str, "signing key for access tokens; without one jobcast runs open"),
    _Option("require_auth", _boolean, "refuse to start without --secret", flag=True),
    _Option("max_connections_per_client", _positive_int, "open WebSockets and streams per client address"),
    _Option("starts_per_minute", _positive_int, "job starts one token may make per minute (with --secret)"),
    _Option("ws_messages_per_second", _positive_int, "messages a WebSocket client may send per second"),
    _Option("max_queued", _positive_int, "queued jobs this process holds before refusing with queue_full"),
    _Option("ws_compression", _boolean, "offer permessage-deflate on WebSockets", flag=True),
    _Option("app_dir", str, "folder that --agent modules are imported from, before installed packages"),
    _Option("header_timeout", _positive_float, "seconds a connection has to send a request's headers"),
    _Option(
        "max_pending_connections",
        _non_negative_int,
        "connections waiting for their request headers before the oldest is closed (0: half the file limit, "
        "at most 1000)",
    ),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    store: str = "sqlite:///jobcast.db"
    agents: tuple[str, ...] = DEFAULT_AGENTS
    workers: int = 1
    threads: int = 8
    lease_seconds: float = 15.0
    job_timeout: float = 600.0
    demo_seconds: float = 20.0
    log_level: str = "info"
    progress_interval: float = 1.0
    history: int = 1000
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    send_buffer: int = 1000
    sse_keepalive: float = 15.0
    shutdown_grace: float = 3.0
    allowed_origins: tuple[str, ...] = ()
    secret: str | None = dataclasses.field(default=None, repr=False)
    require_auth: bool = False
    max_connections_per_client: int = 50
    starts_per_minute: int = 30
    ws_messages_per_second: int = 20
    max_queued: int = 100
    ws_compression: bool = False
    app_dir: str = "."
    header_timeout: float = 5.0
    max_pending_connections: int = 0

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
    for option in _OPTIONS:
        raw = environ.get(_env_name(option.name))
        if raw is not None and raw != "":
            values[option.name] = _parse_env(option.name, option.parse, raw)
    agents = environ.get("JOBCAST_AGENTS")
    if agents:
        values["agents"] = _agent_list(agents)
    return values


def _parse_env(name: str, parse: Callable[[str], Any], raw: str) -> Any:
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{_env_name(name)}={raw!r}: {exc}") from None


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    return convert


def build_serve_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Options of ``jobcast serve``. Defaults are None so that variables can fill them."""
    parser = parser or argparse.ArgumentParser(prog="jobcast serve")
    defaults = Settings()
    for option in _OPTIONS:
        flag = "--" + option.name.replace("_", "-")
        default = getattr(defaults, option.name)
        if option.flag:
            parser.add_argument(
                flag,
                dest=option.name,
                action="store_const",
                const=True,
                default=None,
                help=f"{option.help} (env {_env_name(option.name)}=true)",
            )
            continue
        if default in ((), None) or option.name == "secret":
            default = "none"  # never print a secret, even a default one
        parser.add_argument(
            flag,
            dest=option.name,
            type=_argparse_type(option.parse),
            default=None,
            help=f"{option.help} (env {_env_name(option.name)}, default {default})",
        )
    parser.add_argument(
        "--agent",
        dest="agents",
        action="append",
        metavar="MODULE:ATTR",
        default=None,
        help="load an agent; repeat for more (env JOBCAST_AGENTS, comma-separated; "
        "default: the built-in financial and performance agents)",
    )
    return parser
