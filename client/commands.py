"""The CLI's commands: ``watch``, ``refresh``, ``status``, ``cancel``, on the client library.

Each is ``async def command(options, out) -> ExitCode``. What they print is decided by
:class:`Output`: NDJSON with ``--json``, plain lines when stdout is not a terminal, a
rich live display when it is. Notes about the connection go to stderr, never stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, TextIO

import anyio
from rich.console import Console
from rich.live import Live

from .cursor import FINAL_STATES, Message
from .errors import ServerRefused, TransportError
from .exitcodes import ExitCode, for_statuses
from .http import JobcastClient, StartedJob
from .render import (
    STATUS_HEADER,
    LiveTable,
    View,
    apply,
    columns,
    event_lines,
    job_line,
    live_table,
    status_rows,
    status_table,
)
from .subscribe import Subscription

Record = dict[str, Any]


@dataclasses.dataclass
class Output:
    """Where and how a command prints. ``live`` means a terminal gets the rich display."""

    json: bool
    live: bool
    stdout: TextIO
    stderr: TextIO

    @classmethod
    def for_options(cls, options: argparse.Namespace) -> Output:
        return cls(
            json=options.json, live=not options.json and sys.stdout.isatty(), stdout=sys.stdout, stderr=sys.stderr
        )

    def record(self, record: Mapping[str, Any]) -> None:
        """One NDJSON line, with ``--json`` only."""
        if self.json:
            self.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
            self.stdout.flush()

    def lines(self, lines: Iterable[str]) -> None:
        """Plain lines, without ``--json`` only."""
        if not self.json:
            for line in lines:
                self.stdout.write(line + "\n")
            self.stdout.flush()

    def note(self, text: str) -> None:
        self.stderr.write(f"jobcast: {text}\n")
        self.stderr.flush()


class Screen:
    """The command's view of the project, and what changes to it print."""

    def __init__(self, out: Output, view: View) -> None:
        self.out = out
        self.view = view
        self.openings = 0
        self.fell_back = False
        self.notice_text = ""
        self.events: Subscription | None = None

    def __rich__(self) -> LiveTable:
        return live_table(self.view, time.monotonic(), self.caption())

    def caption(self) -> str:
        if self.notice_text or self.events is None:
            return self.notice_text
        cursor = self.events.cursor
        return f"over {self.events.transport} · seq {cursor.after if cursor else 0} · Ctrl-C to stop"

    def show(self, message: Message, *, print_lines: bool = True) -> None:
        """Fold ``message`` in; print its plain lines unless live or ``--json``."""
        before, now = self.view, time.monotonic()
        self.view = apply(before, message, now)
        if print_lines and not self.out.live:
            self.out.lines(event_lines(before, message, self.view, now))

    def opened(self, message: Message, events: Subscription) -> None:
        """A stream (re)opened: say how, unless it is the first over the first transport."""
        self.openings += 1
        self.events = events
        self.notice_text = ""
        if self.openings == 1:
            if self.fell_back:
                self.notice(f"following over {events.transport}")
            return
        seq = events.cursor.after if events.cursor else 0
        how = f"resumed after seq {seq}" if message["type"] == "welcome" else "re-synced from a snapshot"
        self.notice(f"reconnected over {events.transport}; {how}")

    def retrying(self, error: TransportError, delay: float) -> None:
        self.notice(f"lost the connection ({error}); reconnecting in {delay:.1f} s")

    def falling_back(self, error: TransportError) -> None:
        self.fell_back = True
        self.notice(f"{error.transport} did not work ({error.reason}); falling back")

    def notice(self, text: str) -> None:
        self.notice_text = text
        if not self.out.live:
            self.out.note(text)


@contextlib.asynccontextmanager
async def following(
    client: JobcastClient, options: argparse.Namespace, screen: Screen
) -> AsyncIterator[AsyncIterator[Message]]:
    """Subscribe to the project, with the screen's live display open if there is one."""
    async with client.subscribe(
        options.project, transport=options.transport, on_retry=screen.retrying, on_fallback=screen.falling_back
    ) as events:
        async with contextlib.aclosing(_noting_openings(events, screen)) as messages:
            with _live(screen):
                yield messages


async def _noting_openings(events: Subscription, screen: Screen) -> AsyncGenerator[Message, None]:
    async for message in events:
        if message["type"] in ("snapshot", "welcome"):
            screen.opened(message, events)
        yield message


@contextlib.contextmanager
def _live(screen: Screen) -> Iterator[None]:
    if not screen.out.live:
        yield
        return
    console = Console(file=screen.out.stdout)
    with Live(screen, console=console, refresh_per_second=8, redirect_stderr=False):
        yield


def check_agents(snapshot: Message, agents: Iterable[str]) -> None:
    """Refuse agents the server does not have, before anything starts."""
    known = list(snapshot["agents"])
    for agent in agents:
        if agent not in known:
            have = ", ".join(known) or "none"
            raise ServerRefused("unknown_agent", f"no agent named {agent!r}; the server has: {have}", 404)


def unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


# -- watch ---------------------------------------------------------------------------------


async def watch(options: argparse.Namespace, out: Output) -> ExitCode:
    """Follow the project until interrupted (Ctrl-C ends it, with 130)."""
    agents = unique(options.agents)
    screen = Screen(out, View(options.project, only=tuple(agents)))
    async with JobcastClient(options.url, token=options.token) as client, following(client, options, screen) as events:
        async for message in events:
            if message["type"] == "snapshot":
                check_agents(message, agents)
            if message["type"] in ("snapshot", "welcome") or screen.view.shows(message.get("agent", "")):
                out.record(message)
                screen.show(message)
    return ExitCode.OK


# -- refresh -------------------------------------------------------------------------------


@dataclasses.dataclass
class Jobs:
    """The jobs ``refresh`` started or joined, and those that are final."""

    agents: list[str]
    pending: dict[str, str] = dataclasses.field(default_factory=dict)  # job id -> agent
    final: dict[str, Record | None] = dataclasses.field(default_factory=dict)  # agent -> job (None: lost)
    #: agents whose final line was printed as its transition arrived
    shown: set[str] = dataclasses.field(default_factory=set)
    started: bool = False

    def track(self, agent: str, job: Record) -> None:
        if job["status"] in FINAL_STATES:
            self.final[agent] = job
        else:
            self.pending[job["job_id"]] = agent

    def finish(self, job_id: str, job: Record | None) -> str:
        agent = self.pending.pop(job_id)
        self.final[agent] = job
        return agent

    @property
    def done(self) -> bool:
        return self.started and not self.pending


async def refresh(options: argparse.Namespace, out: Output) -> ExitCode:
    """Start the jobs; unless ``--no-wait``, follow exactly them until each is final."""
    jobs = Jobs(unique(options.agents))
    if options.no_wait:
        async with JobcastClient(options.url, token=options.token) as client:
            await _start(client, options, jobs, Screen(out, View(options.project)))
        return ExitCode.OK
    screen = Screen(out, View(options.project, only=tuple(jobs.agents)))
    with anyio.move_on_after(options.timeout) as deadline:
        await _follow(options, jobs, screen)
    if deadline.cancelled_caught:
        return _timed_out(options, jobs, out)
    return _report(jobs, out)


async def _start(client: JobcastClient, options: argparse.Namespace, jobs: Jobs, screen: Screen) -> None:
    for agent in jobs.agents:
        started = await client.start(options.project, agent, priority=options.priority, if_active=options.if_active)
        jobs.track(agent, started.job)
        _announce(started, screen.out)
    jobs.started = True


def _announce(started: StartedJob, out: Output) -> None:
    out.record({"type": "started", "agent": started.agent, "deduplicated": started.deduplicated, "job": started.job})
    how = "joined" if started.deduplicated else "started"
    if not out.live:
        out.lines([f"{started.agent:<12} {how:<10} job {started.job['job_id']} ({started.job['status']})"])


async def _follow(options: argparse.Namespace, jobs: Jobs, screen: Screen) -> None:
    async with JobcastClient(options.url, token=options.token) as client, following(client, options, screen) as events:
        async for message in events:
            await _on_message(client, options, jobs, screen, message)
            if jobs.done:
                return


async def _on_message(
    client: JobcastClient, options: argparse.Namespace, jobs: Jobs, screen: Screen, message: Message
) -> None:
    kind = message["type"]
    if kind == "snapshot" and not jobs.started:
        check_agents(message, jobs.agents)
        screen.show(message, print_lines=False)
        await _start(client, options, jobs, screen)
    elif kind == "snapshot":
        screen.show(message, print_lines=False)
        await _recheck(client, jobs, message)
    elif kind in ("job", "progress", "queue", "output") and _job_id(message) in jobs.pending:
        screen.out.record(message)
        screen.show(message, print_lines=not _is_queued(message))  # the "started" line said so already
        if kind == "job" and message["job"]["status"] in FINAL_STATES:
            jobs.shown.add(jobs.finish(message["job"]["job_id"], message["job"]))


def _is_queued(message: Message) -> bool:
    return message["type"] == "job" and str(message["job"]["status"]) == "queued"


def _job_id(message: Message) -> str | None:
    job = message.get("job")
    return str(job["job_id"]) if isinstance(job, dict) else message.get("job_id")


async def _recheck(client: JobcastClient, jobs: Jobs, snapshot: Message) -> None:
    """After a re-sync, learn the outcome of followed jobs the snapshot no longer shows."""
    for job_id, agent in list(jobs.pending.items()):
        current = (snapshot["agents"].get(agent) or {}).get("job") or {}
        job = current if current.get("job_id") == job_id else await _job_or_none(client, job_id)
        if job is None or job["status"] in FINAL_STATES:
            jobs.finish(job_id, job)


async def _job_or_none(client: JobcastClient, job_id: str) -> Record | None:
    try:
        return await client.job(job_id)
    except ServerRefused as exc:
        if exc.code == "job_not_found":
            return None
        raise


def _report(jobs: Jobs, out: Output) -> ExitCode:
    for agent in jobs.agents:
        job = jobs.final.get(agent)
        out.record({"type": "final", "agent": agent, "status": job["status"] if job else "lost", "job": job})
    unseen = jobs.agents if out.live else [agent for agent in jobs.agents if agent not in jobs.shown]
    out.lines(job_line(agent, jobs.final.get(agent)) for agent in unseen)
    return for_statuses(job["status"] if job else "failed" for job in jobs.final.values())


def _timed_out(options: argparse.Namespace, jobs: Jobs, out: Output) -> ExitCode:
    waiting = [agent for agent in jobs.agents if agent not in jobs.final]
    out.record({"type": "timeout", "timeout_s": options.timeout, "pending": waiting})
    out.note(
        f"--timeout {options.timeout:g} s ran out before {', '.join(waiting)} finished; "
        "the jobs go on running on the server"
    )
    return ExitCode.TIMED_OUT


# -- status and cancel ---------------------------------------------------------------------


async def status(options: argparse.Namespace, out: Output) -> ExitCode:
    """Print each agent's job and last result."""
    async with JobcastClient(options.url, token=options.token) as client:
        project = await client.status(options.project)
    out.record(project)
    if out.live:
        Console(file=out.stdout).print(status_table(project))
    else:
        out.lines(columns(STATUS_HEADER, status_rows(project)))
    return ExitCode.OK


async def cancel(options: argparse.Namespace, out: Output) -> ExitCode:
    """Ask to cancel each agent's queued or running job."""
    async with JobcastClient(options.url, token=options.token) as client:
        for agent in unique(options.agents):
            job = await client.cancel(options.project, agent)
            out.record({"type": "cancel", "agent": agent, "job": job})
            out.lines([job_line(agent, job)])
    return ExitCode.OK


Command = Callable[[argparse.Namespace, Output], Awaitable[ExitCode]]
COMMANDS: dict[str, Command] = {"watch": watch, "refresh": refresh, "status": status, "cancel": cancel}
