"""Storage: the narrow interface the runtime writes and reads through (`base.Store`, `base.Tx`)
and its backends, SQLite (embedded) and Postgres (shared by several processes).

`open_store` is the one place a database URL becomes a backend. It imports the backend it
returns only then: importing `stepwell.store.base` stays cheap, and psycopg is loaded only by a
process that uses Postgres.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stepwell.store.base import Store


def open_store(url: str, *, fsync: bool = True) -> Store:
    """The backend for a database URL (`sqlite:///path.db`, a bare path, or
    `postgresql://...`), not yet opened. Raises ConfigError for any other scheme."""
    from stepwell.core.config import ConfigError  # (CEL and friends: only when opening)

    if url.startswith("sqlite:") or "://" not in url:
        from stepwell.store.sqlite import SqliteStore

        return SqliteStore(url, fsync=fsync)
    if url.startswith(("postgres://", "postgresql://")):
        from stepwell.store.postgres import PostgresStore  # psycopg only when it is used

        return PostgresStore(url, fsync=fsync)
    raise ConfigError(f"unsupported database URL {url!r}; use sqlite:///path.db or "
                      "postgresql://user@host:port/db")
