"""Checks on what clients send, raising :class:`~server.errors.InvalidInput` with a stable code."""

from __future__ import annotations

import re

from .errors import InvalidInput

PROJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: ASCII only: str.isdigit() and regex ``\d`` also accept "²" and "١", which int() rejects or misreads.
WHOLE_NUMBER = re.compile(r"[0-9]+")
DECIMAL_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def whole_number(text: str, *, max_digits: int = 18) -> int | None:
    """``text`` as an int if it is 1 to ``max_digits`` ASCII digits, else None. The one place numbers are read."""
    if len(text) > max_digits or not WHOLE_NUMBER.fullmatch(text):
        return None
    return int(text)


def decimal_number(text: str) -> float | None:
    """``text`` as a float if it is ASCII digits with an optional fraction (no sign, exponent, inf or nan)."""
    if len(text) > 40 or not DECIMAL_NUMBER.fullmatch(text):
        return None
    return float(text)


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
    value = whole_number(raw, max_digits=9)
    if value is None:
        raise InvalidInput(f"invalid_{name}", f"{name} must be a whole number, not {raw[:40]!r}")
    if not low <= value <= high:
        raise InvalidInput(f"invalid_{name}", f"{name} must be between {low} and {high}")
    return value
