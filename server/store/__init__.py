"""Pick a store by URL scheme: ``sqlite:///path.db`` (default), ``redis://host:6379/0`` or ``memory://``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from .base import Follower, JobQuery, LeaseReport, Store, redacted

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["Follower", "JobQuery", "LeaseReport", "Store", "redacted", "store_for"]


def store_for(settings: Settings) -> Store:
    """The store ``settings.store`` names, keeping ``settings.history`` events per project for resumes,
    with ``settings.lease_seconds`` leases when it is shared."""
    store = _store_for(settings.store)
    store.history = settings.history
    store.lease_seconds = settings.lease_seconds
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
