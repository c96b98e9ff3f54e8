"""Load agents from ``module:attribute`` specs and check they keep the contract."""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from jobcast.agents import Agent, Retry

from .errors import ConfigError


def load_agents(specs: Iterable[str], *, app_dir: str | None = None) -> Mapping[str, Agent]:
    """Agents by name, in spec order; a bad spec raises one line naming it and why.

    Modules are looked up in ``app_dir`` first, as uvicorn's ``--app-dir`` does, so
    ``jobcast serve --agent myplugin:MyAgent`` finds ``./myplugin.py``.
    """
    if app_dir is not None:
        _import_from(app_dir)
    loaded: dict[str, Agent] = {}
    for spec in specs:
        agent = load_agent(spec)
        if agent.name in loaded:
            raise ConfigError(f"agent {spec!r}: the name {agent.name!r} is already taken")
        loaded[agent.name] = agent
    if not loaded:
        raise ConfigError("no agents configured")
    return loaded


def _import_from(app_dir: str) -> None:
    folder = os.path.abspath(app_dir)
    if not os.path.isdir(folder):
        raise ConfigError(f"--app-dir {app_dir!r}: no such folder")
    if folder not in sys.path:
        sys.path.insert(0, folder)  # the one place jobcast changes the import path


def load_agent(spec: str) -> Agent:
    target = _import_attribute(spec)
    if isinstance(target, type):
        try:
            target = target()
        except Exception as exc:
            raise ConfigError(f"agent {spec!r}: {target.__name__}() failed: {exc}") from exc
    _check_contract(spec, target)
    return target  # type: ignore[no-any-return]


def _import_attribute(spec: str) -> Any:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"agent {spec!r}: expected the form module:attribute")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"agent {spec!r}: cannot import {module_name!r}: {exc}") from exc
    except Exception as exc:
        raise ConfigError(f"agent {spec!r}: importing {module_name!r} raised {exc!r}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"agent {spec!r}: {module_name!r} has no attribute {attribute!r}") from None
    return target


def _check_contract(spec: str, agent: Any) -> None:
    name = getattr(agent, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"agent {spec!r}: needs a non-empty str attribute 'name'")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"agent {spec!r}: name {name!r} may use only letters, digits, '-' and '_'")
    if not callable(getattr(agent, "refresh", None)):
        raise ConfigError(f"agent {spec!r}: needs a method refresh(project_id, ctx)")
    timeout = getattr(agent, "timeout", None)
    if timeout is not None and not _is_positive_number(timeout):
        raise ConfigError(f"agent {spec!r}: timeout must be a positive number of seconds")
    retry = getattr(agent, "retry", None)
    if retry is not None and not isinstance(retry, Retry):
        raise ConfigError(f"agent {spec!r}: retry must be a jobcast.agents.Retry, like Retry(attempts=3)")
    if not isinstance(getattr(agent, "idempotent", False), bool):
        raise ConfigError(f"agent {spec!r}: idempotent must be True or False")
    max_running = getattr(agent, "max_running", None)
    if max_running is not None and not (
        isinstance(max_running, int) and not isinstance(max_running, bool) and max_running >= 1
    ):
        raise ConfigError(f"agent {spec!r}: max_running must be a whole number of at least 1 (running jobs at once)")


def _is_positive_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def agent_retry(agent: Agent) -> Retry | None:
    retry = getattr(agent, "retry", None)
    return retry if isinstance(retry, Retry) else None


def is_idempotent(agent: Agent) -> bool:
    return getattr(agent, "idempotent", False) is True


def attempts_for(agent: Agent) -> int:
    """How many attempts a job of ``agent`` may have: its ``retry.attempts``; an idempotent agent
    without a policy gets the default policy's, for requeues after its process died."""
    retry = agent_retry(agent)
    if retry is not None:
        return retry.attempts
    return Retry().attempts if is_idempotent(agent) else 1


def agent_timeout(agent: Agent, default: float) -> float:
    timeout = getattr(agent, "timeout", None)
    return float(timeout) if timeout is not None else default
