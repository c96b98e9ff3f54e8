"""Pick a store by URL scheme: ``sqlite:///path.db`` (default) or ``memory://``."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Store

__all__ = ["Store", "store_from_url"]


def store_from_url(url: str) -> Store:
    scheme = url.partition("://")[0]
    if scheme == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        from .sqlite import SQLiteStore, path_from_url

        try:
            return SQLiteStore(path_from_url(url))
        except ValueError as exc:
            raise ConfigError(f"store {url!r}: {exc}") from None
    raise ConfigError(f"store {url!r}: unknown scheme; use sqlite:///path.db or memory://")
