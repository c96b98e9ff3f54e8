"""JSON views built from the store, shared by the API, the legacy routes and (later) snapshots."""

from __future__ import annotations

from typing import Any

from .engine import Engine
from .jobs import isoformat
from .store.base import ProjectState


async def project_view(engine: Engine, project_id: str) -> dict[str, Any]:
    """``GET /api/projects/{id}``: every configured agent's current or last job and result."""
    state = await engine.store.snapshot(project_id, list(engine.agents))
    return {
        "project_id": project_id,
        "epoch": engine.store.epoch,
        "seq": state.seq,
        "agents": agents_state(state),
    }


def agents_state(state: ProjectState) -> dict[str, Any]:
    """The ``agents`` object of a project status or snapshot."""
    agents: dict[str, Any] = {}
    for name, job in state.jobs.items():
        last = state.results.get(name)
        agents[name] = {
            "job": None if job is None else job.to_dict(),
            "last_result": None if last is None else last.result,
            "last_result_at": None if last is None else isoformat(last.at),
        }
    return agents


def agents_view(engine: Engine) -> list[dict[str, Any]]:
    return [{"name": name, "timeout_s": engine.timeout_for(agent)} for name, agent in engine.agents.items()]
