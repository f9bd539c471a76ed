"""The SQLite store's migrations: an older database is upgraded in place, keeping its rows; one
written by a newer stepwell is refused with the same words as on Postgres."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from stepwell.store.base import RunRow, StoreError, migration_files
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


async def test_a_v21_database_keeps_only_unresolved_failures_marked(tmp_path: Path) -> None:
    """Schema v22 marks failed attempts `unresolved` (what `status=retrying` reads): on
    upgrade, only those of active runs whose step has no memo yet keep the mark."""
    path = tmp_path / "old.db"
    with closing(create_at_version(path, 21)) as conn:
        for run_id, status in (("waiting", "running"), ("retried", "running"),
                               ("over", "failed")):
            conn.execute("INSERT INTO runs (id, function_id, status, created_at) "
                         "VALUES (?, 'app/fn', ?, 1)", (run_id, status))
            conn.execute("INSERT INTO step_failures (run_id, hash, step_id, attempt, error, at) "
                         "VALUES (?, 'h', 's', 0, '{}', 1)", (run_id,))
        conn.execute("INSERT INTO memos (run_id, hash, step_id, kind, seq, outcome, "
                     "started_at, ended_at, attempts) "
                     "VALUES ('retried', 'h', 's', 'run', 0, '{\"data\": 1}', 1, 2, 2)")
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    await store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT run_id FROM step_failures WHERE unresolved IS NOT NULL"
                            ).fetchall() == [("waiting",)]


async def test_a_database_from_a_newer_stepwell_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with closing(create_at_version(path, SCHEMA_VERSION)) as conn:
        conn.execute("UPDATE stepwell_meta SET value = '99' WHERE key = 'schema_version'")
    store = SqliteStore(f"sqlite:///{path}")
    with pytest.raises(StoreError, match="schema version 99, written by a newer stepwell; "
                                         f"this stepwell knows up to version {SCHEMA_VERSION}"):
        await store.open()


def _file_pages(path: Path) -> tuple[int, int, int]:
    """(auto_vacuum mode, pages in the file, free pages) after a WAL checkpoint."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return tuple(int(conn.execute(f"PRAGMA {p}").fetchone()[0])    # type: ignore[return-value]
                     for p in ("auto_vacuum", "page_count", "freelist_count"))


async def _fill_and_prune(path: Path, runs: int) -> tuple[tuple[int, int, int], ...]:
    """`runs` finished runs with a 2 KB output each, then prune them all: the file's pages
    before and after."""
    store = SqliteStore(f"sqlite:///{path}")
    await store.open()
    try:
        def fill(tx: Any) -> None:
            for n in range(runs):
                tx.insert_run(RunRow(f"r{n}", "app/fn", [f"e{n}"], n, status="completed",
                                     ended_at=n, output="x" * 2000))

        await store.write(fill)
        full = _file_pages(path)
        while sum(await store.write(lambda tx: tx.prune(10**12, 10**12, 500))):
            pass
    finally:
        await store.close()
    return full, _file_pages(path)


async def test_a_new_database_gives_pruned_pages_back_to_the_file_system(
        tmp_path: Path) -> None:
    """Created with auto_vacuum=INCREMENTAL, so `prune` truncates the pages it frees: the
    file shrinks, nothing is left on the free list."""
    (mode, full_pages, _), (_, pruned_pages, free) = await _fill_and_prune(
        tmp_path / "new.db", 3000)
    assert mode == 2                           # INCREMENTAL
    assert full_pages > 1500                   # ~6 MB of outputs
    assert pruned_pages < full_pages // 5, (full_pages, pruned_pages)
    assert free == 0


async def test_an_older_database_keeps_pruned_pages_for_reuse(tmp_path: Path) -> None:
    """A database created before (auto_vacuum=NONE, which only an offline VACUUM changes)
    keeps the freed pages on its free list, for new rows to reuse."""
    path = tmp_path / "old.db"
    with closing(create_at_version(path, SCHEMA_VERSION)):
        pass
    (mode, full_pages, _), (_, pruned_pages, free) = await _fill_and_prune(path, 3000)
    assert mode == 0
    assert pruned_pages == full_pages
    assert free > full_pages // 2
