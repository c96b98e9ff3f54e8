"""Pick a store by URL scheme: ``sqlite:///path.db`` (default), ``redis://host:6379/0`` or ``memory://``."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Follower, LeaseReport, Store, redacted

__all__ = ["Follower", "LeaseReport", "Store", "redacted", "store_from_url"]


def store_from_url(url: str, *, history: int = 1000, lease_seconds: float = 15.0) -> Store:
    """The store for ``url``. ``history`` is how many events per project it keeps for resumes."""
    store = _store_for(url)
    store.history = history
    store.lease_seconds = lease_seconds
    return store


def _store_for(url: str) -> Store:
    try:
        return _open_store(url)
    except ValueError as exc:
        raise ConfigError(f"store {redacted(url)!r}: {exc}") from None


def _open_store(url: str) -> Store:
    scheme = url.partition("://")[0]
    if scheme in ("redis", "rediss"):
        try:
            from .redis_store import RedisStore
        except ImportError:
            raise ConfigError(f"store {redacted(url)!r} needs redis-py: pip install 'jobcast[redis]'") from None
        return RedisStore(url)
    if scheme == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    if scheme == "sqlite":
        from .sqlite import SQLiteStore, path_from_url

        return SQLiteStore(path_from_url(url))
    raise ConfigError(
        f"store {redacted(url)!r}: unknown scheme; use sqlite:///path.db, redis://host:6379/0 or memory://"
    )
