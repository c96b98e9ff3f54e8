"""Settings come from options and JOBCAST_* variables once; agents load from specs or fail in one line."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from jobcast.agents.builtin import FinancialAgent, PerformanceAgent, financial_figures, performance_figures
from jobcast.cli import main
from jobcast.server.errors import ConfigError
from jobcast.server.plugins import load_agents
from jobcast.server.settings import DEFAULT_AGENTS, Settings


def test_defaults() -> None:
    """With nothing set, jobcast serves on 127.0.0.1:8000 with SQLite and the built-in agents."""
    settings = Settings.from_args([], environ={})
    assert settings == Settings()
    assert (settings.host, settings.port, settings.store) == ("127.0.0.1", 8000, "sqlite:///jobcast.db")
    assert settings.agents == DEFAULT_AGENTS and settings.threads == 8 and settings.job_timeout == 600


def test_variables_fill_in_and_options_win() -> None:
    """Every option has a JOBCAST_ variable; an option on the command line beats it."""
    environ = {
        "JOBCAST_HOST": "0.0.0.0",
        "JOBCAST_PORT": "9000",
        "JOBCAST_STORE": "memory://",
        "JOBCAST_AGENTS": "tests.agents:QuickAgent, tests.agents:GatedAgent",
        "JOBCAST_THREADS": "3",
        "JOBCAST_JOB_TIMEOUT": "12.5",
        "JOBCAST_DEMO_SECONDS": "0",
        "JOBCAST_LOG_LEVEL": "WARNING",
    }
    from_env = Settings.from_env(environ)
    assert from_env == Settings(
        host="0.0.0.0",
        port=9000,
        store="memory://",
        agents=("tests.agents:QuickAgent", "tests.agents:GatedAgent"),
        threads=3,
        job_timeout=12.5,
        demo_seconds=0.0,
        log_level="warning",
    )
    overridden = Settings.from_args(["--port", "9100", "--agent", "x:y", "--agent", "z:w"], environ=environ)
    assert overridden.port == 9100 and overridden.agents == ("x:y", "z:w") and overridden.threads == 3


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("JOBCAST_WORKERS", "0"),
        ("JOBCAST_PORT", "http"),
        ("JOBCAST_JOB_TIMEOUT", "-1"),
        ("JOBCAST_LOG_LEVEL", "loud"),
        ("JOBCAST_THREADS", "²"),  # str.isdigit() says yes, int() says no
        ("JOBCAST_THREADS", "١"),  # int() would read it as 1
        ("JOBCAST_JOB_TIMEOUT", "١٠"),
        ("JOBCAST_JOB_TIMEOUT", "inf"),
    ],
)
def test_a_bad_variable_names_itself(name: str, value: str) -> None:
    """A variable that does not parse raises ConfigError naming the variable and the value."""
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_a_bad_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """jobcast serve --threads many exits 2 with argparse's one-line usage error."""
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--threads", "many"])
    assert exited.value.code == 2
    assert "--threads" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("no_colon", "expected the form module:attribute"),
        ("no_such_module:Agent", "cannot import 'no_such_module'"),
        ("tests.agents:Missing", "has no attribute 'Missing'"),
        ("tests.agents:NoName", "needs a non-empty str attribute 'name'"),
        ("tests.agents:not_an_agent", "needs a non-empty str attribute 'name'"),
        ("tests.agents:ExplodingInit", "ExplodingInit() failed: no API key"),
    ],
)
def test_bad_agent_specs_fail_with_one_line(spec: str, reason: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each bad spec stops start-up: exit 2 and one line naming the spec and why."""
    assert main(["serve", "--store", "memory://", "--agent", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and spec in err and reason in err


def test_agent_names_must_be_unique() -> None:
    """Two agents with one name are refused."""
    with pytest.raises(ConfigError, match="already taken"):
        load_agents(["tests.agents:QuickAgent", "tests.agents:QuickAgent"])


def test_classes_are_instantiated_and_instances_used_as_they_are() -> None:
    """A class spec is instantiated with no arguments; an instance spec is used directly."""
    loaded = load_agents(["jobcast.agents.builtin:FinancialAgent", "tests.agents:instance_agent"])
    assert isinstance(loaded["financial"], FinancialAgent)
    assert loaded["instance"].refresh("p", None) == {"from": "instance"}  # type: ignore[arg-type]


class RecordingContext:
    """A ctx that records reports and can be cancelled, for calling agents directly."""

    def __init__(self, demo_seconds: float = 0.0, cancel_after: int | None = None) -> None:
        self.demo_seconds = demo_seconds
        self.reports: list[tuple[Any, Any]] = []
        self.streamed: list[str] = []
        self._cancelled = threading.Event()
        self._cancel_after = cancel_after

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def report(self, percent: float | None = None, message: str | None = None) -> None:
        self.reports.append((percent, message))
        if self._cancel_after is not None and len(self.reports) >= self._cancel_after:
            self._cancelled.set()

    def sleep(self, seconds: float) -> bool:
        return self._cancelled.wait(seconds)

    def stream(self, text: str) -> None:
        self.streamed.append(text)

    def on_cancel(self, callback: Any) -> None:
        pass


@pytest.mark.parametrize("agent", [FinancialAgent(), PerformanceAgent()])
def test_builtin_agents_stream_a_narrative_that_ends_with_their_summary(agent: Any) -> None:
    ctx = RecordingContext()
    result = agent.refresh("acme", ctx)
    assert "".join(ctx.streamed).strip().endswith(result["summary"])


@pytest.mark.parametrize("agent", [FinancialAgent(), PerformanceAgent()])
def test_builtin_agents_report_named_steps(agent: Any) -> None:
    """Each built-in agent reports every step with a rising percent and ends at 100."""
    ctx = RecordingContext()
    agent.refresh("acme", ctx)
    messages = [message for _, message in ctx.reports]
    assert messages == [*agent.steps, "done"]
    percents = [percent for percent, _ in ctx.reports]
    assert percents == sorted(percents) and percents[-1] == 100


@pytest.mark.parametrize("agent", [FinancialAgent(), PerformanceAgent()])
def test_builtin_agents_stop_when_cancelled(agent: Any) -> None:
    """Cancelled after the first step, a built-in agent raises Cancelled instead of finishing."""
    from jobcast.agents import Cancelled

    with pytest.raises(Cancelled):
        agent.refresh("acme", RecordingContext(demo_seconds=30, cancel_after=1))


def test_builtin_results_are_realistic_and_deterministic() -> None:
    """Figures depend only on the project id and have the promised fields."""
    financial = financial_figures("acme")
    assert financial == financial_figures("acme") != financial_figures("globex")
    assert {"revenue", "costs", "burn", "runway_months", "series"} <= set(financial)
    assert len(financial["series"]) == 12
    performance = performance_figures("acme")
    assert performance == performance_figures("acme")
    assert all({"name", "value", "target", "trend", "met"} <= set(kpi) for kpi in performance["kpis"])


def test_every_setting_has_one_option_and_one_variable() -> None:
    """Each Settings field is declared once and so is both --its-name and JOBCAST_ITS_NAME, with its help."""
    import dataclasses

    from jobcast.server.settings import build_serve_parser

    options = {action.dest: action for action in build_serve_parser()._actions if action.dest != "help"}
    for field in dataclasses.fields(Settings):
        action = options.pop(field.name)
        flag = "--agent" if field.name == "agents" else "--" + field.name.replace("_", "-")
        assert action.option_strings == [flag] and f"JOBCAST_{field.name.upper()}" in (action.help or "")
    assert options == {}
