"""JSON views built from the store for the API and the legacy routes; the agents object is :mod:`.wire`'s."""

from __future__ import annotations

from typing import Any

from .engine import Engine
from .wire import agents_state


async def project_view(engine: Engine, project_id: str) -> dict[str, Any]:
    """``GET /api/projects/{id}``: every configured agent's current or last job and result."""
    state = await engine.store.snapshot(project_id, list(engine.agents))
    return {
        "project_id": project_id,
        "epoch": engine.store.epoch,
        "seq": state.seq,
        "agents": agents_state(state, await engine.places()),
    }


def agents_view(engine: Engine) -> list[dict[str, Any]]:
    return [{"name": name, "timeout_s": engine.timeout_for(agent)} for name, agent in engine.agents.items()]
