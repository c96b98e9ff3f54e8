"""The seed app's two agents: each asks an LLM to analyse a project, step by step.

Both versions of the example use this module. Before jobcast, the Flask app runs
``refresh_financial_data`` in a thread of its own; after, jobcast runs
:class:`FinancialAgent` and :class:`PerformanceAgent` in its worker threads and pushes
their progress (``jobcast serve --app-dir examples/flask_app --agent seed_agents:FinancialAgent``).

The LLM call: with ``JOBCAST_LLM_BASE_URL`` set (any OpenAI-compatible server), each step's
question goes to the model; without it, the answer is computed from the project id, so the
example runs on a machine with no model and a test can predict the figures.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

import httpx

from jobcast.agents import Cancelled, Context

FINANCIAL_STEPS = ("reading the ledger", "asking the model about revenue", "asking about costs",
                   "checking the forecast", "writing the summary")  # fmt: skip
PERFORMANCE_STEPS = ("collecting metrics", "asking the model about trends", "writing the summary")

#: seconds each step takes without a model (the example's stand-in for the model's latency)
STEP_SECONDS = float(os.environ.get("SEED_AGENT_STEP_SECONDS", "2"))


def ask_llm(question: str, project_id: str) -> str:
    """One question to the model; a stand-in answer from the project id when no model is configured."""
    base_url = os.environ.get("JOBCAST_LLM_BASE_URL")
    if not base_url:
        return f"{question}: steady ({hashlib.sha256(project_id.encode()).hexdigest()[:6]})"
    response = httpx.post(
        f"{base_url.rstrip('/')}/chat/completions",
        headers={"Authorization": f"Bearer {os.environ.get('JOBCAST_LLM_API_KEY', '')}"},
        json={
            "model": os.environ.get("JOBCAST_LLM_MODEL", "gpt-4o-mini"),
            "messages": [{"role": "user", "content": f"Project {project_id}: {question}"}],
        },  # fmt: skip
        timeout=120,
    )
    response.raise_for_status()
    answer: str = response.json()["choices"][0]["message"]["content"]
    return answer


def figures(project_id: str) -> dict[str, int]:
    digest = hashlib.sha256(project_id.encode()).digest()
    return {
        "revenue": 100_000 + int.from_bytes(digest[:2], "big"),
        "costs": 60_000 + int.from_bytes(digest[2:4], "big"),
    }


def analyse(
    project_id: str,
    steps: tuple[str, ...],
    report: Callable[[float, str], None] = lambda percent, message: None,
    wait: Callable[[float], bool] = lambda seconds: bool(time.sleep(seconds)),
) -> dict[str, Any]:
    """Walk the steps, asking the model at each. ``wait`` returns True once the job is cancelled."""
    answers = []
    for index, step in enumerate(steps):
        report(round(100 * index / len(steps)), step)
        if not os.environ.get("JOBCAST_LLM_BASE_URL") and wait(STEP_SECONDS):
            raise Cancelled
        answers.append(ask_llm(step, project_id))
    return {"project_id": project_id, **figures(project_id), "summary": answers[-1]}


def refresh_financial_data(project_id: str) -> dict[str, Any]:
    """The seed's blocking call: what its Flask route used to run in a thread."""
    return analyse(project_id, FINANCIAL_STEPS)


class FinancialAgent:
    name = "financial"

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        return analyse(project_id, FINANCIAL_STEPS, lambda percent, step: ctx.report(percent, step), ctx.sleep)


class PerformanceAgent:
    name = "performance"

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        return analyse(project_id, PERFORMANCE_STEPS, lambda percent, step: ctx.report(percent, step), ctx.sleep)
