"""JSON views built from the store, shared by the API, the legacy routes and (later) snapshots."""

from __future__ import annotations

from typing import Any

from .engine import Engine
from .jobs import isoformat


async def project_view(engine: Engine, project_id: str) -> dict[str, Any]:
    """``GET /api/projects/{id}``: every configured agent's current or last job and result."""
    store = engine.store
    seq = await store.last_seq(project_id)
    results = await store.last_results(project_id)
    agents: dict[str, Any] = {}
    for name in engine.agents:
        job = await store.latest_job(project_id, name)
        last = results.get(name)
        agents[name] = {
            "job": None if job is None else job.to_dict(),
            "last_result": None if last is None else last.result,
            "last_result_at": None if last is None else isoformat(last.at),
        }
    return {"project_id": project_id, "epoch": store.epoch, "seq": seq, "agents": agents}


def agents_view(engine: Engine) -> list[dict[str, Any]]:
    return [{"name": name, "timeout_s": engine.timeout_for(agent)} for name, agent in engine.agents.items()]
