"""The contract an agent is written against (:mod:`.contract`), and ``ChatAgent`` (:mod:`.chat`).

``from jobcast.agents import Cancelled, Retry, Transient`` for the contract; the built-in
demo agents live in :mod:`.builtin`. docs/agents.md describes writing one.
"""

from __future__ import annotations

from typing import Any

from .contract import Agent, Cancelled, Context, Retry, Transient


def __getattr__(name: str) -> Any:
    """``ChatAgent`` is imported on first use (``from jobcast.agents import ChatAgent``), not with the contract."""
    if name == "ChatAgent":
        from .chat import ChatAgent

        return ChatAgent
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Agent", "Cancelled", "ChatAgent", "Context", "Retry", "Transient"]
