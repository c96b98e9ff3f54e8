"""The scheduler's rules as pure functions (server/scheduling.py): the order, the limits, the places."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobcast.server.errors import InvalidInput
from jobcast.server.jobs import Job, JobStatus
from jobcast.server.scheduling import (
    Caps,
    IfActive,
    Priority,
    Queued,
    QueueState,
    RunningJob,
    Waiting,
    decide_start,
    next_startable,
    ordered,
    places,
)


def queued(job_id: str, *, at: float, user: str = "u", priority: str = "normal", project: str = "p",
           agent: str = "a", after: str | None = None) -> Queued:  # fmt: skip
    return Queued(job_id, project, agent, Priority(priority), user, at, after)


def running(job_id: str, *, user: str = "u", project: str = "p", agent: str = "a") -> RunningJob:
    return RunningJob(job_id, project, agent, user)


def ids(jobs: list[Queued]) -> list[str]:
    return [job.job_id for job in jobs]


def test_high_goes_before_normal_before_low_whatever_their_age() -> None:
    state = QueueState(
        [queued("low", at=1, priority="low"), queued("normal", at=2), queued("high", at=3, priority="high")], []
    )
    assert ids(ordered(state)) == ["high", "normal", "low"]


def test_within_a_priority_users_take_turns() -> None:
    """A's 20 jobs hold turns 0..19; B's single job holds turn 0 and goes right after A's first."""
    state = QueueState([*(queued(f"a{n}", at=n, user="A") for n in range(20)), queued("b0", at=100, user="B")], [])
    order = ids(ordered(state))
    assert order[:3] == ["a0", "b0", "a1"]


def test_running_jobs_count_toward_a_users_turn() -> None:
    """A already runs a job, so B's first job goes before A's next one."""
    state = QueueState([queued("a1", at=1, user="A"), queued("b0", at=2, user="B")], [running("a0", user="A")])
    assert ids(ordered(state)) == ["b0", "a1"]


def test_equal_turns_go_oldest_first() -> None:
    state = QueueState([queued("x", at=5, user="X"), queued("y", at=3, user="Y")], [])
    assert ids(ordered(state)) == ["y", "x"]


@pytest.mark.parametrize(
    ("caps", "runs", "waiting_for", "detail"),
    [
        (Caps(per_project=2), [running("r1"), running("r2", agent="b")], Waiting.PROJECT_LIMIT, "project limit 2 of 2"),
        (Caps(per_agent={"a": 1}), [running("r1", project="q")], Waiting.AGENT_LIMIT, "agent limit 1 of 1"),
        (Caps(per_user=1), [running("r1", project="q", agent="b")], Waiting.USER_LIMIT, "user limit 1 of 1"),
    ],
    ids=["project", "agent", "user"],
)
def test_a_job_over_a_limit_waits_and_says_which(
    caps: Caps, runs: list[RunningJob], waiting_for: Waiting, detail: str
) -> None:
    state = QueueState([queued("held", at=1), queued("free", at=2, project="other", agent="z", user="v")], runs)
    found = {place.job_id: place for place in places(state, caps)}
    assert (found["held"].waiting_for, found["held"].detail) == (waiting_for, detail)
    assert next_startable(state, caps) == state.queued[1]  # the job behind it is not held up


def test_places_count_from_one_and_say_what_is_ahead() -> None:
    state = QueueState([queued("j1", at=1, user="A"), queued("j2", at=2, user="B"), queued("j3", at=3, user="C")], [])
    found = places(state, Caps())
    assert [(p.job_id, p.position, p.waiting_for, p.detail) for p in found] == [
        ("j1", 1, Waiting.THREAD, "next to start"),
        ("j2", 2, Waiting.THREAD, "1 ahead in the queue"),
        ("j3", 3, Waiting.THREAD, "2 ahead in the queue"),
    ]
    assert found[0].to_dict() == {"position": 1, "waiting_for": "thread", "detail": "next to start"}


def test_a_follow_up_waits_for_the_job_before_it() -> None:
    state = QueueState([queued("next", at=2, after="head")], [running("head")])
    assert next_startable(state, Caps()) is None
    assert places(state, Caps())[0].waiting_for is Waiting.PREVIOUS_JOB
    assert next_startable(QueueState(state.queued, []), Caps()) is not None  # the head ended


def test_a_worker_takes_only_the_agents_it_has() -> None:
    state = QueueState([queued("x", at=1, agent="x"), queued("y", at=2, agent="y")], [])
    assert next_startable(state, Caps(), runnable={"y"}) == state.queued[1]


@pytest.mark.parametrize("value", ["urgent", "", "HIGH", 1, None, ["high"]])
def test_an_unknown_priority_is_invalid_priority(value: object) -> None:
    with pytest.raises(InvalidInput) as raised:
        Priority.parse(value)
    assert raised.value.code == "invalid_priority"


@pytest.mark.parametrize("value", ["join", "", 0, None])
def test_an_unknown_if_active_is_invalid_if_active(value: object) -> None:
    with pytest.raises(InvalidInput) as raised:
        IfActive.parse(value)
    assert raised.value.code == "invalid_if_active"


# -- what a refresh does to the agent's active jobs --------------------------------------------------


def test_with_nothing_active_every_mode_inserts() -> None:
    new = Job.new("p", "a")
    for mode in IfActive:
        decision = decide_start([], new, mode)
        assert (decision.job, decision.deduplicated, decision.insert) == (new, False, new)


def test_attach_returns_the_newest_active_job() -> None:
    head = Job.new("p", "a").transition(JobStatus.RUNNING)
    follow = Job.new("p", "a").following(head.job_id)
    assert decide_start([head, follow], Job.new("p", "a"), IfActive.ATTACH).job == follow


def test_queue_adds_one_follow_up_and_a_second_request_attaches_to_it() -> None:
    head = Job.new("p", "a").transition(JobStatus.RUNNING)
    first = decide_start([head], Job.new("p", "a"), IfActive.QUEUE)
    assert first.insert is not None and first.insert.after == head.job_id and not first.deduplicated
    again = decide_start([head, first.insert], Job.new("p", "a"), IfActive.QUEUE)
    assert again.deduplicated and again.job == first.insert


def test_replace_stops_a_running_head_and_cancels_queued_ones() -> None:
    head = Job.new("p", "a").transition(JobStatus.RUNNING)
    follow = Job.new("p", "a").following(head.job_id)
    new = Job.new("p", "a")
    decision = decide_start([head, follow], new, IfActive.REPLACE)
    assert decision.stop is not None and decision.stop.cancel_requested
    assert [job.status for job in decision.cancel] == [JobStatus.CANCELLED]
    assert decision.insert is not None and decision.insert.after == head.job_id  # starts once the head has stopped


def test_replace_of_a_queued_head_cancels_it_and_the_new_job_needs_no_wait() -> None:
    head = Job.new("p", "a")
    decision = decide_start([head], Job.new("p", "a"), IfActive.REPLACE)
    assert decision.cancel[0].job_id == head.job_id and decision.cancel[0].status is JobStatus.CANCELLED
    assert decision.insert is not None and decision.insert.after is None and decision.stop is None


# -- the rules hold for any queue ---------------------------------------------------------------------


_users, _projects, _agents = st.sampled_from("ABC"), st.sampled_from("pqr"), st.sampled_from("xyz")
_queue = st.lists(
    st.tuples(_users, _projects, _agents, st.sampled_from(["high", "normal", "low"]), st.integers(0, 50)),
    max_size=25,
)
_running = st.lists(st.tuples(_users, _projects, _agents), max_size=6)
_caps = st.builds(
    Caps,
    per_project=st.integers(0, 3),
    per_user=st.integers(0, 3),
    per_agent=st.dictionaries(_agents, st.integers(1, 3), max_size=2),
)


def _state(waiting: list[tuple[str, str, str, str, int]], runs: list[tuple[str, str, str]]) -> QueueState:
    queue = [
        queued(f"q{n}", at=at, user=u, priority=pr, project=p, agent=a) for n, (u, p, a, pr, at) in enumerate(waiting)
    ]
    return QueueState(queue, [running(f"r{n}", user=u, project=p, agent=a) for n, (u, p, a) in enumerate(runs)])


@settings(max_examples=300, deadline=None)
@given(_queue, _running, _caps)
def test_for_any_queue_places_number_every_job_once_in_priority_order(
    waiting: list[tuple[str, str, str, str, int]], runs: list[tuple[str, str, str]], caps: Caps
) -> None:
    state = _state(waiting, runs)
    found = places(state, caps)
    assert sorted(place.job_id for place in found) == sorted(job.job_id for job in state.queued)
    assert [place.position for place in found] == list(range(1, len(found) + 1))
    ranks = [Priority(next(j for j in state.queued if j.job_id == place.job_id).priority).rank for place in found]
    assert ranks == sorted(ranks)


@settings(max_examples=300, deadline=None)
@given(_queue, _running, _caps)
def test_for_any_queue_the_next_job_is_the_first_place_that_waits_only_for_a_thread(
    waiting: list[tuple[str, str, str, str, int]], runs: list[tuple[str, str, str]], caps: Caps
) -> None:
    state = _state(waiting, runs)
    chosen = next_startable(state, caps)
    free = [place.job_id for place in places(state, caps) if place.waiting_for is Waiting.THREAD]
    assert (chosen.job_id if chosen else None) == (free[0] if free else None)
    if chosen is not None:  # starting it never takes a group past its limit
        load = [*runs, (chosen.requester, chosen.project_id, chosen.agent)]
        if caps.per_project:
            assert sum(p == chosen.project_id for _, p, _ in load) <= caps.per_project
        if caps.per_user:
            assert sum(u == chosen.requester for u, _, _ in load) <= caps.per_user
        if chosen.agent in caps.per_agent:
            assert sum(a == chosen.agent for _, _, a in load) <= caps.per_agent[chosen.agent]
