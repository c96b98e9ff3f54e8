"""``jobcast serve --workers N``: N server processes on one listening socket.

The parent binds the socket once and starts N children (spawned, like uvicorn's own
``--workers``), each a complete jobcast server that accepts on the shared socket. They
share nothing in memory, so a shared store is required; Redis carries the events,
job state, leases and dedupe between them. The parent restarts a child that dies and,
on SIGINT or SIGTERM, passes the signal on and waits for the children to finish.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import time
from multiprocessing.context import SpawnProcess
from types import FrameType

from . import logs
from .errors import ConfigError
from .settings import Settings
from .store import Store

logger = logging.getLogger(__name__)

multiprocessing.allow_connection_pickling()  # lets the listening socket travel to spawned children
_spawn = multiprocessing.get_context("spawn")

#: A worker that exits sooner than this after starting is crashing, not just unlucky ...
_STEADY_SECONDS = 10.0
#: ... and after this many such exits in a row the server stops instead of looping.
_QUICK_EXITS_ALLOWED = 3


def check_shareable(settings: Settings, store: Store) -> None:
    """More than one process needs a store they can share (``Store.shared``); refuse the others in one line."""
    scheme = settings.store.partition("://")[0]
    if settings.workers > 1 and not store.shared:
        raise ConfigError(
            f"--workers {settings.workers} needs a store the processes can share, like redis://127.0.0.1:6379/0; "
            f"{scheme}: lives inside one process (see docs/scaling.md; for parallel agent jobs use --threads)"
        )
    if settings.threads == 0 and not store.shared:
        raise ConfigError(
            f"--threads 0 runs no jobs in this process, so they need a jobcast worker sharing the store; "
            f"{scheme}: cannot be shared. Use redis://127.0.0.1:6379/0 (see docs/scheduling.md)"
        )


def run_workers(settings: Settings, listener: socket.socket) -> int:
    """Start the children on ``listener`` and supervise them until a signal ends the server.

    The caller has checked the store can be shared (:func:`check_shareable`)."""
    logs.configure(settings.log_level, settings.log_format)
    stopping = threading.Event()
    children = [_start_child(settings, listener) for _ in range(settings.workers)]
    logger.info("jobcast: %d worker processes on http://%s:%d", len(children), settings.host, listener.getsockname()[1])

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    started = [time.monotonic()] * len(children)
    quick_exits = 0
    while not stopping.wait(0.5):
        for index, child in enumerate(children):
            if child.is_alive():
                continue
            lived = time.monotonic() - started[index]
            quick_exits = quick_exits + 1 if lived < _STEADY_SECONDS else 0
            if quick_exits >= _QUICK_EXITS_ALLOWED:
                logger.error("worker processes keep exiting within %g s of starting; stopping", _STEADY_SECONDS)
                stopping.set()
                break
            logger.warning("worker process %s exited with %s; starting another", child.pid, child.exitcode)
            children[index], started[index] = _start_child(settings, listener), time.monotonic()
    for child in children:
        if child.is_alive() and child.pid is not None:
            child.terminate()  # SIGTERM: each child shuts down gracefully on its own
    for child in children:
        child.join()
    listener.close()
    return 1 if quick_exits >= _QUICK_EXITS_ALLOWED else 0


def listen(settings: Settings) -> socket.socket:
    """Bind and listen, before the app starts: a port clash must be found before the store is touched."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((settings.host, settings.port))
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener


def _start_child(settings: Settings, listener: socket.socket) -> SpawnProcess:
    child = _spawn.Process(target=_serve_child, args=(settings, listener), name="jobcast-worker")
    child.start()
    return child


def _serve_child(settings: Settings, listener: socket.socket) -> None:
    """One worker: a whole jobcast server on the inherited socket."""
    from .app import create_app
    from .runner import run_server

    run_server(create_app(settings), settings, sockets=[listener])
