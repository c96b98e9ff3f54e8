"""Checks on what clients send, raising :class:`~server.errors.InvalidInput` with a stable code."""

from __future__ import annotations

import re

from .errors import InvalidInput

PROJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def project_id(value: str) -> str:
    if not PROJECT_ID.fullmatch(value):
        raise InvalidInput(
            "invalid_project_id",
            f"project id {value[:80]!r} must match {PROJECT_ID.pattern}",
        )
    return value


def bounded_int(name: str, raw: str | None, *, default: int, low: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 9:
        raise InvalidInput(f"invalid_{name}", f"{name} must be a whole number, not {raw[:40]!r}")
    value = int(raw)
    if not low <= value <= high:
        raise InvalidInput(f"invalid_{name}", f"{name} must be between {low} and {high}")
    return value
