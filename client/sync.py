"""The synchronous client, :class:`Client`: the HTTP actions, waiting for a job, following a project.

::

    from jobcast.client import Client

    with Client("http://127.0.0.1:8000") as jobs:
        started = jobs.refresh("acme", "financial")
        job = jobs.wait(started.job["job_id"], timeout=60)

For code that has no event loop (a Flask or Django view, a script, a worker thread). It is
built on ``httpx.Client`` and follows a project over long-poll, the one transport that holds
nothing open between two requests. It speaks the routes :class:`~client.http.JobcastClient`
speaks, raises its errors (the answers are read by :mod:`.answers`), and yields the messages
:func:`~client.subscribe.subscribe` yields, with the same cursor (:mod:`.cursor`), long-poll
reader (:mod:`.transports`) and backoff (:mod:`.backoff`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Iterator
from types import TracebackType
from typing import Any

import httpx

from .answers import Record, answer, auth_headers, describe, json_object, refusal
from .backoff import Reconnect
from .cursor import FINAL_STATES, Cursor, Message, Tracker
from .endpoint import Endpoint, quote
from .errors import ConnectFailed, ServerUnreachable, TransportError, TransportRefused, WaitTimedOut
from .http import DEFAULT_TIMEOUT, StartedJob
from .subscribe import RetryHook
from .transports import PollReader, classify


class Client:
    """The HTTP API of one server, without an event loop. ``with Client(url) as client: ...``

    One client may be shared by every thread of a process, as its ``httpx.Client`` may.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.endpoint = Endpoint.parse(url)
        self._timeout = timeout
        self._http = httpx.Client(
            base_url=self.endpoint.base, timeout=timeout, transport=transport, headers=auth_headers(token)
        )

    def __repr__(self) -> str:
        return f"Client({self.endpoint.base!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def refresh(
        self, project_id: str, agent: str, *, priority: str | None = None, if_active: str | None = None
    ) -> StartedJob:
        """Start the agent's job on the project, or join the one already queued or running.

        ``priority``: ``high``, ``normal`` (the server's default) or ``low``. ``if_active``: what to do
        when the agent has an active job: ``attach`` (the default), ``replace`` or ``queue``.
        """
        options = {"priority": priority, "if_active": if_active}
        body = self._request(
            "POST",
            self.endpoint.project(project_id, f"/agents/{quote(agent)}/refresh"),
            body={key: value for key, value in options.items() if value is not None} or None,
        )
        return StartedJob(agent, body["job"], bool(body.get("deduplicated")))

    #: the async client's name for :meth:`refresh`
    start = refresh

    def cancel(self, project_id: str, agent: str) -> Record:
        """Cancel the agent's queued or running job; ServerRefused ``nothing_to_cancel`` if none."""
        body = self._request("POST", self.endpoint.project(project_id, f"/agents/{quote(agent)}/cancel"))
        job: Record = body["job"]
        return job

    def status(self, project_id: str) -> Record:
        """The project's state: each agent's job and last result, and the cursor."""
        return self._request("GET", self.endpoint.project(project_id))

    def job(self, job_id: str) -> Record:
        """One job by id, in any state."""
        return self._request("GET", f"/api/jobs/{quote(job_id)}")

    def history(self, project_id: str, *, agent: str | None = None, limit: int | None = None) -> list[Record]:
        """The project's jobs, newest first, in every state: only ``agent``'s if given, at most ``limit`` (50)."""
        params = {key: value for key, value in {"agent": agent, "limit": limit}.items() if value is not None}
        jobs: list[Record] = self._request("GET", self.endpoint.project(project_id, "/jobs"), params=params)["jobs"]
        return jobs

    def agents(self) -> list[Record]:
        """The configured agents and their timeouts."""
        agents: list[Record] = self._request("GET", "/api/agents")["agents"]
        return agents

    def wait(self, job_id: str, timeout: float) -> Record:
        """The job's record once it is final (completed, failed, cancelled or timed out).

        Long-polls its project from a cursor, so it answers as soon as the job ends. Raises
        :class:`WaitTimedOut` if the job is not final after ``timeout`` seconds (it is not cancelled).
        """
        deadline = time.monotonic() + timeout
        job = self.job(job_id)
        if job["status"] in FINAL_STATES:
            return job
        with Watch(self._http, self.endpoint, job["project_id"], open_timeout=self._timeout, deadline=deadline) as feed:
            for message in feed:
                if message["type"] == "job" and message["job"]["job_id"] == job_id:
                    job = message["job"]
                if message["type"] == "snapshot" or job["status"] in FINAL_STATES:
                    # A snapshot may skip the job's transitions; a final `job` message leaves out the output.
                    job = self.job(job_id)
                    if job["status"] in FINAL_STATES:
                        return job
        raise WaitTimedOut(job_id, timeout, job)

    def watch(
        self,
        project_id: str,
        *,
        cursor: Cursor | None = None,
        reconnect: Reconnect | None = None,
        on_retry: RetryHook | None = None,
        poll_wait: int = 25,
    ) -> Watch:
        """Follow the project over long-poll: an iterator of the messages ``subscribe`` yields.

        ``cursor`` resumes from an earlier watch's ``cursor``; ``reconnect`` is the backoff policy;
        ``on_retry(error, delay)`` is called before each retry; ``poll_wait`` is the long-poll's
        ``wait`` (seconds, 0 to 30).
        """
        return Watch(
            self._http,
            self.endpoint,
            project_id,
            cursor=cursor,
            reconnect=reconnect,
            on_retry=on_retry,
            poll_wait=poll_wait,
            open_timeout=self._timeout,
        )

    def _request(self, method: str, path: str, *, body: Record | None = None, params: Record | None = None) -> Record:
        try:
            response = self._http.request(method, path, json=body, params=params)
        except httpx.HTTPError as exc:
            raise ServerUnreachable(self.endpoint.base, describe(exc)) from exc
        return answer(response, f"{method} {path}")


class Watch:
    """One project's messages over long-poll, as dicts: iterate it (once), as ``subscribe``'s.

    ``cursor`` is the last transition delivered. Between two messages no request is in
    flight, so leaving the ``for`` loop stops it; ``close()`` (or ``with``) ends it for good.
    Lost connections are retried with backoff and resumed from the cursor; it raises what
    ``subscribe`` raises, and never ends by itself (unless ``deadline``, a ``time.monotonic()``
    instant, passes: then it just ends).
    """

    #: the one transport it uses (``subscribe`` has three)
    transport = "poll"

    def __init__(
        self,
        http: httpx.Client,
        endpoint: Endpoint,
        project_id: str,
        *,
        cursor: Cursor | None = None,
        reconnect: Reconnect | None = None,
        on_retry: RetryHook | None = None,
        poll_wait: int = 25,
        open_timeout: float = DEFAULT_TIMEOUT,
        deadline: float | None = None,
    ) -> None:
        self.project_id = project_id
        self.tracker = Tracker(cursor)
        self.reconnect = reconnect or Reconnect()
        self._http = http
        self._endpoint = endpoint
        self._on_retry = on_retry
        self._poll_wait = poll_wait
        self._open_timeout = open_timeout
        self._deadline = deadline
        self._messages = self._follow()

    def __repr__(self) -> str:
        return f"<Watch {self.project_id!r} transport=poll cursor={self.cursor}>"

    @property
    def cursor(self) -> Cursor | None:
        return self.tracker.cursor

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> Message:
        return next(self._messages)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._messages.close()

    def _follow(self) -> Generator[Message, None, None]:
        """The reconnect loop of ``Subscription._follow``, for the long-poll alone."""
        attempt, failing_since = 0, None
        while True:
            try:
                for message in self._replies():
                    attempt, failing_since = 0, None
                    if self.tracker.accept(message):
                        yield message
                return  # the deadline passed
            except TransportError as exc:
                failing_since = failing_since or time.monotonic()
                self._check_give_up(exc, time.monotonic() - failing_since)
                delay = self.reconnect.delay(attempt)
                attempt += 1
                if self._on_retry is not None:
                    self._on_retry(exc, delay)
                time.sleep(delay if self._deadline is None else max(0.0, min(delay, self._left())))

    def _check_give_up(self, error: TransportError, failing_for: float) -> None:
        base = self._endpoint.base
        if not self.tracker.opened and not self.reconnect.retry_first:
            raise ServerUnreachable(base, error.reason) from error
        if self.reconnect.gives_up(failing_for):
            raise ServerUnreachable(base, f"{error.reason} (gave up after {failing_for:.0f} s)") from error

    def _replies(self) -> Iterator[Message]:
        """One "connection": the first reply comes at once and opens it; the next ones wait for news."""
        reader = PollReader(self.project_id)
        wait = 0
        while (reply := self._poll(wait, reader.outputs.cursor())) is not None:
            yield from reader.messages(reply)
            wait = self._poll_wait

    def _poll(self, wait: int, output: str) -> Record | None:
        """The next reply from the cursor; None once the deadline has passed, before or during the poll."""
        read = wait + self._open_timeout
        if self._deadline is not None:
            if self._left() <= 0:
                return None
            wait, read = min(wait, math.ceil(self._left())), min(read, self._left())
        try:
            response = self._http.get(
                self._endpoint.project(self.project_id, "/events"),
                params=self._params(wait, output),
                timeout=httpx.Timeout(self._open_timeout, read=read),
            )
        except httpx.ReadTimeout as exc:
            if self._deadline is not None and self._left() <= 0:
                return None
            raise ConnectFailed("poll", describe(exc)) from exc
        except httpx.HTTPError as exc:
            raise ConnectFailed("poll", describe(exc)) from exc
        if response.status_code != 200:
            refused = classify("poll", refusal(response.status_code, response.content, response.reason_phrase))
            raise refused.refusal if isinstance(refused, TransportRefused) else refused  # no transport to fall back to
        return json_object(response.content, "the long-poll route")

    def _params(self, wait: int, output: str) -> dict[str, Any]:
        cursor = self.tracker.cursor
        params: dict[str, Any] = {"wait": wait}
        if output:
            params["output"] = output
        if cursor is not None:
            params.update(epoch=cursor.epoch, after=cursor.after)
        return params

    def _left(self) -> float:
        assert self._deadline is not None
        return self._deadline - time.monotonic()
