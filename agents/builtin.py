"""Two demo agents that stand in for the old app's LLM-backed financial and performance agents.

They walk through named steps, report progress at each, stop between steps once
cancelled, and return figures that depend only on the project id, so a demo looks
real and a test can predict the result. ``--demo-seconds`` sets how long a run takes.
"""

from __future__ import annotations

import calendar
import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Any

from .contract import Cancelled, Context


def project_random(project_id: str, salt: str) -> random.Random:
    """A generator seeded by the project id, so each project always gets the same figures."""
    digest = hashlib.sha256(f"{salt}:{project_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def run_steps(ctx: Context, steps: Sequence[str], narrative: str = "") -> None:
    """Spend ``ctx.demo_seconds`` across ``steps``, reporting each, checking cancel between, and stream
    ``narrative`` word by word along the way, as a model would."""
    pause = ctx.demo_seconds / len(steps)
    words = narrative.split(" ") if narrative else []
    per_step = -(-len(words) // len(steps)) if words else 0
    for index, step in enumerate(steps):
        if ctx.cancelled:
            raise Cancelled
        ctx.report(percent=round(100 * index / len(steps), 1), message=step)
        chunk = words[index * per_step : (index + 1) * per_step]
        for word in chunk:
            ctx.stream(word + " ")
            if ctx.sleep(pause / (len(chunk) + 1)):
                raise Cancelled
        if ctx.sleep(pause / (len(chunk) + 1)):
            raise Cancelled
    ctx.report(percent=100.0, message="done")


class FinancialAgent:
    name = "financial"
    steps = ("collecting ledgers", "asking the model", "checking the figures", "summarising")

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        figures = financial_figures(project_id)
        run_steps(ctx, self.steps, f"Reading the ledgers of {project_id}. {figures['summary']}")
        return figures


class PerformanceAgent:
    name = "performance"
    steps = ("gathering metrics", "asking the model", "comparing with targets", "summarising")

    def refresh(self, project_id: str, ctx: Context) -> dict[str, Any]:
        figures = performance_figures(project_id)
        run_steps(ctx, self.steps, f"Comparing {project_id} with its targets. {figures['summary']}")
        return figures


def financial_figures(project_id: str) -> dict[str, Any]:
    rng = project_random(project_id, "financial")
    revenue = rng.randrange(40_000, 400_000)
    growth = rng.uniform(-0.03, 0.08)
    series: list[dict[str, Any]] = []
    monthly = revenue / (1 + growth) ** 11
    for month in calendar.month_abbr[1:]:
        cost = monthly * rng.uniform(0.7, 1.3)
        series.append({"month": month, "revenue": round(monthly), "costs": round(cost)})
        monthly *= 1 + growth
    costs = series[-1]["costs"]
    burn = max(0, costs - series[-1]["revenue"])
    cash = rng.randrange(200_000, 5_000_000)
    return {
        "currency": "USD",
        "revenue": series[-1]["revenue"],
        "costs": costs,
        "burn": burn,
        "cash": cash,
        "runway_months": None if burn == 0 else round(cash / burn, 1),
        "series": series,
        "summary": _financial_summary(growth, burn),
    }


def _financial_summary(growth: float, burn: int) -> str:
    trend = "growing" if growth > 0 else "shrinking"
    if burn == 0:
        return f"Revenue is {trend} ({growth:+.1%} a month) and covers costs."
    return f"Revenue is {trend} ({growth:+.1%} a month); the project burns {burn:,} a month."


_KPIS: tuple[tuple[str, str, Callable[[random.Random], float], bool], ...] = (
    ("on_time_delivery", "%", lambda rng: rng.uniform(70, 99), True),
    ("velocity", "points/sprint", lambda rng: rng.uniform(20, 60), True),
    ("defect_rate", "per 1k lines", lambda rng: rng.uniform(0.5, 6), False),
    ("customer_satisfaction", "/10", lambda rng: rng.uniform(5, 9.8), True),
)


def performance_figures(project_id: str) -> dict[str, Any]:
    rng = project_random(project_id, "performance")
    kpis = [_kpi(rng, name, unit, draw, higher_is_better) for name, unit, draw, higher_is_better in _KPIS]
    met = sum(1 for kpi in kpis if kpi["met"])
    return {
        "kpis": kpis,
        "met": met,
        "total": len(kpis),
        "summary": f"{met} of {len(kpis)} KPIs meet their target.",
    }


def _kpi(
    rng: random.Random, name: str, unit: str, draw: Callable[[random.Random], float], higher_is_better: bool
) -> dict[str, Any]:
    value = round(draw(rng), 1)
    target = round(draw(rng), 1)
    previous = round(draw(rng), 1)
    met = value >= target if higher_is_better else value <= target
    trend = "up" if value > previous else "down" if value < previous else "flat"
    return {
        "name": name,
        "unit": unit,
        "value": value,
        "target": target,
        "previous": previous,
        "higher_is_better": higher_is_better,
        "met": met,
        "trend": trend,
    }
