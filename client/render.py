"""What the CLI shows: pure functions of (state, message), called directly by tests.

:func:`apply` folds a message into a :class:`View`; :func:`event_lines` is the plain
text a message adds (no ANSI, no bars); :func:`live_table` is the rich table of a
terminal's live display. Text the server sent is stripped of control characters
before it is shown, so an agent's step message cannot drive the terminal.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from .cursor import FINAL_STATES, Message
from .output import appended

Record = dict[str, Any]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_STYLES = {
    "queued": "yellow",
    "running": "cyan",
    "retrying": "yellow",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "magenta",
    "timed_out": "red",
}
HEADLINE_WIDTH = 120


@dataclasses.dataclass(frozen=True)
class Row:
    """One agent: its latest job, its live progress, its last result."""

    agent: str
    job: Record | None = None
    percent: float | None = None
    message: str | None = None
    elapsed_s: float | None = None
    #: when ``elapsed_s`` was true, on the caller's clock, to tick it while running
    seen_at: float = 0.0
    last_result: Record | None = None
    #: a queued job's place: ``{"position", "waiting_for", "detail"}``
    queue: Record | None = None
    #: a running job's estimate, from its record or latest progress: seconds left, and past its usual time
    eta_s: float | None = None
    overdue: bool = False
    #: what the row's job streamed: so far while it runs, all of it once it ended; and its attempt
    output: str = ""
    output_attempt: int = 0

    @property
    def status(self) -> str | None:
        return None if self.job is None else str(self.job["status"])


@dataclasses.dataclass(frozen=True)
class View:
    """A project as the CLI shows it. ``only`` limits the agents shown (empty: all)."""

    project_id: str
    rows: Mapping[str, Row] = dataclasses.field(default_factory=dict)
    only: tuple[str, ...] = ()
    #: queued jobs' places by job id, kept for a ``queue`` message that comes before its job's event
    places: Mapping[str, Record] = dataclasses.field(default_factory=dict)

    def shows(self, agent: str) -> bool:
        return not self.only or agent in self.only

    def visible(self) -> list[Row]:
        names = self.only or tuple(self.rows)
        return [self.rows.get(name, Row(name)) for name in names]


# -- state ---------------------------------------------------------------------------------


def apply(view: View, message: Message, now: float) -> View:
    """The view after ``message``; ``now`` is the caller's clock (for ticking elapsed times)."""
    kind = message.get("type")
    if kind == "snapshot":
        rows = {name: _row_from_state(name, state, now) for name, state in message["agents"].items()}
        return dataclasses.replace(view, rows=rows)
    if kind == "job":
        previous = view.rows.get(message["agent"])
        if _older(message["job"], previous):
            return view  # the agent shows its newest job; an older one (being replaced) ends out of view
        return _with_row(view, _row_from_job(previous, message["job"], now, view.places))
    if kind == "progress":
        return _with_progress(view, message, now)
    if kind == "queue":
        return _with_place(view, message)
    if kind == "output":
        return _with_output(view, message)
    return view


def _with_output(view: View, message: Message) -> View:
    row = view.rows.get(message["agent"])
    if row is None or row.job is None or row.job["job_id"] != message["job_id"]:
        return view
    attempt, text = appended((row.output_attempt, row.output) if row.output_attempt else None, message)
    return _with_row(view, dataclasses.replace(row, output=text, output_attempt=attempt))


def _older(job: Record, row: Row | None) -> bool:
    shown = None if row is None else row.job
    return shown is not None and shown["job_id"] != job["job_id"] and str(job["created_at"]) < str(shown["created_at"])


def _with_place(view: View, message: Message) -> View:
    place = {key: message.get(key) for key in ("position", "waiting_for", "detail")}
    view = dataclasses.replace(view, places={**view.places, str(message["job_id"]): place})
    row = view.rows.get(message["agent"])
    if row is None or row.job is None or row.job["job_id"] != message["job_id"] or row.status != "queued":
        return view
    return _with_row(view, dataclasses.replace(row, queue=place))


def _row_from_state(agent: str, state: Record, now: float) -> Row:
    row = Row(agent, last_result=state.get("last_result"))
    return _row_from_job(row, state["job"], now) if state.get("job") else row


def _row_from_job(previous: Row | None, job: Record, now: float, places: Mapping[str, Record] | None = None) -> Row:
    progress = job.get("progress") or {}
    last_result = job.get("result") if job["status"] == "completed" else previous.last_result if previous else None
    queue = (job.get("queue") or (places or {}).get(str(job["job_id"]))) if job["status"] == "queued" else None
    same = previous is not None and previous.job is not None and previous.job["job_id"] == job["job_id"]
    output, output_attempt = (job.get("output") or "", int(job.get("attempt") or 1))
    if not output and same and previous is not None:  # a job message leaves output out: keep what streamed
        output, output_attempt = previous.output, previous.output_attempt
    return Row(
        agent=str(job["agent"]),
        job=job,
        percent=progress.get("percent"),
        message=progress.get("message"),
        elapsed_s=job.get("elapsed_s"),
        seen_at=now,
        last_result=last_result,
        queue=queue,
        eta_s=job.get("eta_s"),
        overdue=bool(job.get("overdue")),
        output=output,
        output_attempt=output_attempt if output else 0,
    )


def _with_progress(view: View, message: Message, now: float) -> View:
    row = view.rows.get(message["agent"])
    if row is None or row.job is None or row.job["job_id"] != message["job_id"] or row.status in FINAL_STATES:
        return view
    update = dataclasses.replace(
        row,
        percent=message.get("percent"),
        message=message.get("message"),
        elapsed_s=message.get("elapsed_s"),
        seen_at=now,
        eta_s=message.get("eta_s"),
        overdue=bool(message.get("overdue")),
    )
    return _with_row(view, update)


def _with_row(view: View, row: Row) -> View:
    return dataclasses.replace(view, rows={**view.rows, row.agent: row})


def elapsed(row: Row, now: float) -> float | None:
    """Seconds the row's job has run, ticking on from the last report while it runs."""
    if row.elapsed_s is None:
        return None
    return row.elapsed_s + (now - row.seen_at if row.status == "running" else 0.0)


# -- text ------------------------------------------------------------------------------------


def clean(text: object) -> str:
    """Server text made safe for one line of a terminal: control characters become spaces."""
    return _CONTROL.sub(" ", str(text)).strip()


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def format_percent(percent: float | None) -> str:
    return "-" if percent is None else f"{percent:.0f}%"


def headline(result: Record | None) -> str:
    """A result in one line: its ``summary``, or its simple fields as ``key=value``."""
    if not result:
        return ""
    if isinstance(result.get("summary"), str):
        return _shorten(clean(result["summary"]))
    return _shorten(" ".join(f"{clean(key)}={_brief(value)}" for key, value in result.items()))


def _brief(value: Any) -> str:
    if isinstance(value, list | tuple):
        return f"[{len(value)} items]"
    if isinstance(value, dict):
        return "{...}"
    return clean(value)


def _shorten(text: str) -> str:
    return text if len(text) <= HEADLINE_WIDTH else text[: HEADLINE_WIDTH - 3] + "..."


def error_text(job: Record | None) -> str:
    """A failed, timed-out, cancelled or interrupted job's error as ``code: message``; empty otherwise."""
    error = (job or {}).get("error") or {}
    if not error:
        return ""
    return ": ".join(filter(None, [clean(error.get("code", "")), clean(error.get("message", ""))]))


def detail(row: Row, now: float) -> str:
    """What follows the agent and state on a row's line."""
    job = row.job
    if job is None:
        return f"last result: {headline(row.last_result)}" if row.last_result else "no job yet"
    status, taken = job["status"], format_seconds(elapsed(row, now))
    if status == "queued":
        return f"job {job['job_id'][:8]}" + (f"  {queue_text(row.queue)}" if row.queue else "")
    if status == "running":
        step = clean(row.message) if row.message else ""
        cancel = " (cancel requested)" if job.get("cancel_requested") else ""
        eta = eta_text(row.eta_s, row.overdue)
        return f"{format_percent(row.percent):>4}  {taken}  {step}".rstrip() + cancel + (f"  ({eta})" if eta else "")
    if status == "retrying":
        return retry_text(job)
    if status == "completed":
        return f"{taken}  {headline(job.get('result'))}".rstrip()
    return f"{taken}  {error_text(job)}".rstrip()


_ORDINAL = {1: "st", 2: "nd", 3: "rd"}
_LIMITS = {"project_limit": "project", "agent_limit": "agent", "user_limit": "user"}
_COUNT = re.compile(r"([0-9]+ of [0-9]+)$")


def ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else _ORDINAL.get(number % 10, "th")
    return f"{number}{suffix}"


def queue_text(queue: Record) -> str:
    """A queued job's place in words: ``Queued: 3rd in line, waiting for the project limit (2 of 2)``.

    The dashboard says the same (web/static/js/state.js).
    """
    position, waiting_for = queue.get("position"), str(queue.get("waiting_for"))
    where = f"{ordinal(position)} in line" if isinstance(position, int) else "in line"
    if waiting_for in _LIMITS:
        count = _COUNT.search(str(queue.get("detail") or ""))
        reason = f"the {_LIMITS[waiting_for]} limit" + (f" ({count[1]})" if count else "")
    elif waiting_for == "previous_job":
        reason = "the job before it to end"
    else:
        reason = "a free thread"
    return f"Queued: {where}, waiting for {reason}"


def eta_text(eta_s: float | None, overdue: bool) -> str:
    """``about 40 s left``, ``about 3 min left``, or ``taking longer than usual``; empty without history.

    The dashboard says the same (web/static/js/state.js)."""
    if overdue:
        return "taking longer than usual"
    if eta_s is None:
        return ""
    if eta_s < 60:
        return f"about {max(1, round(eta_s))} s left"
    return f"about {round(eta_s / 60)} min left"


def retry_text(job: Record, wall: float | None = None) -> str:
    """``Retrying in 12 s (attempt 2 of 3): provider overloaded``, counted down on this machine's clock."""
    retry_at = job.get("retry_at")
    seconds = 0
    if isinstance(retry_at, str):
        moment = datetime.datetime.fromisoformat(retry_at.replace("Z", "+00:00")).timestamp()
        seconds = max(0, math.ceil(moment - (time.time() if wall is None else wall)))
    when = f"in {seconds} s" if seconds else "now"
    error = (job.get("error") or {}).get("message")
    reason = f": {clean(error)}" if error else ""
    return f"Retrying {when} (attempt {job.get('attempt')} of {job.get('max_attempts')}){reason}"


def row_line(row: Row, now: float) -> str:
    """One plain line for a row: agent, state, then the detail."""
    return f"{clean(row.agent):<12} {row.status or 'idle':<10} {detail(row, now)}".rstrip()


def event_lines(before: View, message: Message, after: View, now: float) -> list[str]:
    """The plain lines a message adds: a line per changed row, none for an unchanged one."""
    kind = message.get("type")
    if kind == "snapshot":
        return [row_line(row, now) for row in after.visible()]
    if kind not in ("job", "progress", "queue", "output") or not after.shows(message["agent"]):
        return []
    agent = message["agent"]
    finished = kind == "job" and str(message["job"]["status"]) in FINAL_STATES
    text = _output_lines(before.rows.get(agent), after.rows.get(agent), finished)
    if kind == "output":
        return text
    row = after.rows.get(agent)
    if row is None or row == before.rows.get(agent):
        return text
    if kind == "progress" and _same_step(before.rows.get(agent), row):
        return []
    return [*text, row_line(row, now)]


def _same_attempt(before: Row, after: Row) -> bool:
    if before.job is None or after.job is None:
        return False
    return bool(before.job["job_id"] == after.job["job_id"] and before.output_attempt == after.output_attempt)


def _output_lines(before: Row | None, after: Row | None, finished: bool) -> list[str]:
    """The output lines a message completed, as ``agent> line``; at the job's end, the last partial line too."""
    if after is None or not after.output:
        return []
    shown = before.output if before is not None and _same_attempt(before, after) else ""
    done_before = shown.rfind("\n") + 1
    done_now = len(after.output) if finished else after.output.rfind("\n") + 1
    if done_now <= done_before or not after.output.startswith(shown[:done_before]):
        return []
    return [f"{clean(after.agent)}> {clean(line)}" for line in after.output[done_before:done_now].splitlines()]


def _same_step(old: Row | None, new: Row) -> bool:
    return old is not None and (old.percent, old.message) == (new.percent, new.message)


def job_line(agent: str, job: Record | None) -> str:
    """A job record's line, as ``refresh`` prints a final job and ``cancel`` the cancelled one."""
    if job is None:
        return f"{clean(agent):<12} {'lost':<10} the server no longer knows this job"
    return row_line(_row_from_job(None, job, 0.0), 0.0)


# -- the status table ----------------------------------------------------------------------

STATUS_HEADER = ("AGENT", "STATE", "JOB", "ELAPSED", "DETAIL", "LAST RESULT")


def status_rows(project: Record) -> list[tuple[str, ...]]:
    """``GET /api/projects/{id}`` as table rows, one per agent.

    DETAIL is a live job's progress, or an ended job's error (``interrupted: the server
    stopped ...``) for a job that failed, timed out or was cancelled.
    """
    rows: list[tuple[str, ...]] = []
    for name, state in project["agents"].items():
        job = state.get("job") or {}
        rows.append(
            (
                clean(name),
                str(job.get("status", "idle")),
                str(job.get("job_id", "-"))[:8],
                format_seconds(job.get("elapsed_s")),
                _status_detail(job),
                headline(state.get("last_result")) or "-",
            )
        )
    return rows


def _status_detail(job: Record) -> str:
    if job.get("status") in FINAL_STATES:
        return error_text(job) or "-"
    if job.get("status") == "queued" and job.get("queue"):
        return queue_text(job["queue"])
    if job.get("status") == "retrying":
        return retry_text(job)
    progress = job.get("progress") or {}
    eta = eta_text(job.get("eta_s"), bool(job.get("overdue"))) if job.get("status") == "running" else ""
    parts = [format_percent(progress.get("percent")), clean(progress.get("message") or ""), f"({eta})" if eta else ""]
    step = " ".join(filter(None, parts))
    return step if job else "-"


def columns(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Rows as left-aligned plain text columns, two spaces apart."""
    table = [tuple(header), *(tuple(row) for row in rows)]
    widths = [max(len(row[index]) for row in table) for index in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in table]


def status_table(project: Record) -> Table:
    """The status table for a terminal: agent, state, job and elapsed never wrap; detail and result do."""
    table = Table(title=f"project {clean(project['project_id'])}", title_justify="left")
    for index, name in enumerate(STATUS_HEADER):
        wraps = index >= 4
        table.add_column(name.lower(), no_wrap=not wraps, overflow="fold", ratio=1 if wraps else None)
    for row in status_rows(project):
        state = row[1]
        cells = [Text(cell, style=_STYLES.get(cell, "")) for cell in row]
        if state in _STYLES and state not in ("completed", "running", "queued"):
            cells[4].stylize(_STYLES[state])
        table.add_row(*cells)
    return table


# -- the live display ------------------------------------------------------------------------


#: The bar's width when the terminal has room; it shrinks, then goes, before anything else does.
BAR_WIDTH = 24
_MIN_BAR = 6


@dataclasses.dataclass(frozen=True)
class LiveTable:
    """A terminal's live display, laid out when drawn, for the terminal's width.

    Each agent gets a line with its name, state, bar, percent and elapsed time, and below
    it, indented and wrapped, its step, result headline or error. The name and state are
    never cut: the bar shrinks first and then goes; at 80 columns everything fits.
    """

    view: View
    now: float
    caption: str = ""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        rows = self.view.visible()
        name_width = max((len(clean(row.agent)) for row in rows), default=0)
        state_width = max((len(row.status or "idle") for row in rows), default=0)
        # two spaces between fields; percent is 4 wide, elapsed 7 (like 12m05s)
        bar_width = min(BAR_WIDTH, options.max_width - (name_width + state_width + 4 + 7 + 8))
        yield Text(f"jobcast · {clean(self.view.project_id)}", style="bold")
        for row in rows:
            yield _live_line(row, self.now, name_width, state_width, bar_width)
            step = _step(row, self.now)
            if step:
                yield Padding(Text(step, style=_step_style(row), overflow="fold"), (0, 0, 0, 2))
            tail = output_tail(row)
            if tail:
                yield Padding(Text(tail, style="dim", overflow="fold"), (0, 0, 0, 4))
        if self.caption:
            yield Text(self.caption, style="dim")


#: Lines of a running job's output the live display shows under its row.
OUTPUT_TAIL_LINES = 4


def output_tail(row: Row) -> str:
    """The last few lines of a running job's output, for the live display (all of it goes to the log when piped)."""
    if row.status != "running" or not row.output:
        return ""
    return "\n".join(clean(line) for line in row.output.rstrip("\n").splitlines()[-OUTPUT_TAIL_LINES:])


def live_table(view: View, now: float, caption: str = "") -> LiveTable:
    return LiveTable(view, now, caption)


def _live_line(row: Row, now: float, name_width: int, state_width: int, bar_width: int) -> Text:
    status = row.status or "idle"
    line = Text(no_wrap=False, overflow="fold")
    line.append(clean(row.agent).ljust(name_width), style="bold")
    line.append("  ")
    line.append(status.ljust(state_width), style=_STYLES.get(status, "dim"))
    if bar_width >= _MIN_BAR:
        line.append("  ")
        line.append_text(_bar(row, bar_width))
    line.append(f"  {format_percent(100.0 if status == 'completed' else row.percent):>4}")
    line.append(f"  {format_seconds(elapsed(row, now)):>7}")
    return line


def _step(row: Row, now: float) -> str:
    status = row.status or "idle"
    if status == "completed":
        return headline((row.job or {}).get("result"))
    if status in FINAL_STATES:
        return error_text(row.job)
    if status == "queued" and row.queue:
        return queue_text(row.queue)
    if status == "retrying" and row.job:
        return retry_text(row.job)
    cancel = " (cancel requested)" if (row.job or {}).get("cancel_requested") else ""
    eta = eta_text(row.eta_s, row.overdue) if status == "running" else ""
    return " · ".join(filter(None, [clean(row.message or "") + cancel, eta]))


def _step_style(row: Row) -> str:
    status = row.status or "idle"
    return _STYLES[status] if status in FINAL_STATES and status != "completed" else ""


def _bar(row: Row, width: int) -> Text:
    if row.status == "running" and row.percent is None:
        return Text("━" * width, style="grey35")  # running, no percent yet
    done = 100.0 if row.status == "completed" else row.percent or 0.0
    filled = round(width * min(max(done, 0.0), 100.0) / 100)
    return Text("━" * filled, style="green" if row.status == "completed" else "magenta") + Text(
        "━" * (width - filled), style="grey23"
    )
