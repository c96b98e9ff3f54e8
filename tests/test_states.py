"""The job state machine: every legal move, and a clear error for every other."""

from __future__ import annotations

import itertools

import pytest

from jobcast.server.errors import IllegalTransition
from jobcast.server.jobs import TRANSITIONS, Job, JobError, JobStatus, check_transition

LEGAL = {
    ("queued", "running"),
    ("queued", "cancelled"),
    ("queued", "failed"),
    ("running", "completed"),
    ("running", "failed"),
    ("running", "cancelled"),
    ("running", "timed_out"),
    ("running", "retrying"),  # an attempt failed in a way worth retrying
    ("running", "queued"),  # an idempotent agent's job requeued after its process died
    ("retrying", "running"),
    ("retrying", "cancelled"),
    ("retrying", "failed"),
}


@pytest.mark.parametrize(("current", "target"), sorted(LEGAL))
def test_legal_transitions_pass(current: str, target: str) -> None:
    """Each documented move is allowed."""
    check_transition(JobStatus(current), JobStatus(target))


ILLEGAL = sorted(set(itertools.product([s.value for s in JobStatus], repeat=2)) - LEGAL)


@pytest.mark.parametrize(("current", "target"), ILLEGAL)
def test_illegal_transitions_raise(current: str, target: str) -> None:
    """Every other move raises IllegalTransition naming both states."""
    with pytest.raises(IllegalTransition) as caught:
        check_transition(JobStatus(current), JobStatus(target))
    assert (caught.value.current, caught.value.target) == (current, target)


def test_the_table_is_the_documented_graph() -> None:
    """TRANSITIONS holds exactly the legal moves, and final states lead nowhere."""
    table = {(a.value, b.value) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == LEGAL
    assert all(not TRANSITIONS[s] for s in JobStatus if s.is_final)


def test_a_job_records_when_it_started_and_finished() -> None:
    """Running sets started_at; a final state sets finished_at and the elapsed time freezes."""
    job = Job.new("p1", "financial")
    assert job.status is JobStatus.QUEUED and job.started_at is None and job.elapsed_s() is None
    running = job.transition(JobStatus.RUNNING, at=job.created_at + 1)
    assert running.started_at == job.created_at + 1
    done = running.transition(JobStatus.COMPLETED, result={"x": 1}, at=job.created_at + 3.5)
    assert done.finished_at == job.created_at + 3.5
    assert done.elapsed_s() == 2.5
    assert done.result == {"x": 1} and done.error is None


def test_only_completed_jobs_keep_a_result() -> None:
    """A failed job carries its error and no result, even if one was passed."""
    running = Job.new("p1", "a").transition(JobStatus.RUNNING)
    failed = running.transition(JobStatus.FAILED, result={"x": 1}, error=JobError(code="agent_error", message="x"))
    assert failed.result is None and failed.error == JobError(code="agent_error", message="x")


def test_job_records_round_trip() -> None:
    """Stores keep records losslessly, and the public JSON shape has every documented field."""
    job = Job.new("p1", "financial").transition(JobStatus.RUNNING).with_cancel_requested()
    assert Job.from_record(job.to_record()) == job
    public = job.to_dict(at=job.updated_at)
    assert set(public) == {
        "job_id", "project_id", "agent", "status", "created_at", "updated_at", "started_at",
        "finished_at", "elapsed_s", "progress", "cancel_requested", "result", "error",
        "priority", "started_by", "after", "runner", "queue",
        "attempt", "max_attempts", "retry_at", "attempts", "expected_s", "eta_s", "overdue",
        "output", "output_truncated",
    }  # fmt: skip
    assert "requester" not in public  # the scheduler's name for the user may be an address: never shown


def test_the_clients_copy_of_the_final_states_is_the_servers() -> None:
    """jobcast.client keeps its own FINAL_STATES (it imports nothing from the server): it must be the same set."""
    from jobcast.client.cursor import FINAL_STATES as CLIENT_FINAL
    from jobcast.server.jobs import ACTIVE_STATES, FINAL_STATES

    assert CLIENT_FINAL == {status.value for status in FINAL_STATES}
    assert ACTIVE_STATES | FINAL_STATES == set(JobStatus) and not ACTIVE_STATES & FINAL_STATES
