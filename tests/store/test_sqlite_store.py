"""The SQLite store's migrations: an older database is upgraded in place, keeping its rows; one
written by a newer stepwell is refused with the same words as on Postgres."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from stepwell.store.base import StoreError, migration_files
from stepwell.store.sqlite import SCHEMA_VERSION, SqliteStore


def create_at_version(path: Path, version: int) -> sqlite3.Connection:
    """A database built by the migrations up to `version`, as an older stepwell left it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE stepwell_meta (key TEXT PRIMARY KEY, value TEXT)")
    for number, sql in migration_files("sqlite"):
        if number <= version:
            conn.executescript(sql)
    conn.execute("INSERT INTO stepwell_meta VALUES ('schema_version', ?)", (str(version),))
    return conn


async def test_a_v7_database_is_upgraded_keeping_its_flow_state(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with closing(create_at_version(path, 7)) as conn:
        conn.execute("INSERT INTO flow_state (key, num, text, expires_at) "
                     "VALUES ('throttle:app/fn:k', NULL, '1000', 5000)")
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    try:
        assert await store.read(lambda tx: tx.get_flow("throttle:app/fn:k")) == ("1000", 5000)
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT value FROM stepwell_meta").fetchall() == [
            (str(SCHEMA_VERSION),)]
        columns = [row[1] for row in conn.execute("PRAGMA table_info(flow_state)")]
    assert columns == ["key", "text", "expires_at"]


async def test_a_database_from_a_newer_stepwell_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with closing(create_at_version(path, SCHEMA_VERSION)) as conn:
        conn.execute("UPDATE stepwell_meta SET value = '99' WHERE key = 'schema_version'")
    store = SqliteStore(f"sqlite:///{path}")
    with pytest.raises(StoreError, match="schema version 99, written by a newer stepwell; "
                                         f"this stepwell knows up to version {SCHEMA_VERSION}"):
        await store.open()
