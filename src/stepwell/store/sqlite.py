"""SQLite backend: WAL, `BEGIN IMMEDIATE`, group commit on one writer thread.

All writes go through a single writer thread that drains every script submitted since its last
commit and runs them in one transaction (`store.groupcommit`): with `synchronous=FULL` each
commit is an fsync, so grouping is what lets thousands of runs per second checkpoint durably.
Reads use their own connections (WAL lets them proceed while the writer works).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from stepwell.store.base import StoreError, Tx, migration_files, pending_migrations
from stepwell.store.groupcommit import GroupCommit
from stepwell.store.sqlite_tx import SqliteTx

R = TypeVar("R")


def sqlite_path(url: str) -> str:
    """`sqlite:///rel.db` -> `rel.db`, `sqlite:////abs.db` -> `/abs.db`; a bare path is kept."""
    if url.startswith("sqlite://"):
        return url[len("sqlite:///"):] if url.startswith("sqlite:///") else url[len("sqlite://"):]
    return url


SCHEMA_VERSION = migration_files("sqlite")[-1][0]


def _connect(path: str, *, fsync: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=OFF")
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Apply pending migrations; refuse a database written by a newer stepwell."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS stepwell_meta (key TEXT PRIMARY KEY, value TEXT)")
        row = conn.execute("SELECT value FROM stepwell_meta WHERE key='schema_version'").fetchone()
        latest, pending = pending_migrations("sqlite", int(row[0]) if row else 0)
        for sql in pending:
            code = "\n".join(line for line in sql.splitlines()
                             if not line.lstrip().startswith("--"))
            for statement in code.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute("INSERT OR REPLACE INTO stepwell_meta VALUES ('schema_version', ?)",
                     (str(latest),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class _SqliteTransactor:
    """The writer side of group commit: `BEGIN IMMEDIATE` ... `COMMIT` on one connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.tx = SqliteTx(conn)

    def run(self, scripts: Sequence[Callable[[Tx], Any]]) -> list[Any]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            values = [script(self.tx) for script in scripts]
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        return values

    def close(self) -> None:
        self.conn.close()


class SqliteStore:
    """The embedded backend. `fsync=True` is `synchronous=FULL`: every commit reaches the disk."""

    def __init__(self, url: str, *, fsync: bool = True) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self.fsync = fsync
        self._writer: GroupCommit | None = None
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="stepwell-read")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = _connect(self.path, fsync=self.fsync)
            migrate(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        # A closed store can be opened again: fresh reader threads and connections.
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="stepwell-read")
        self._local = threading.local()
        # One writer: SQLite has a single write lock, so a second writer would only wait on it.
        self._writer = GroupCommit([_SqliteTransactor(conn)], name="stepwell-writer")
        self._writer.start(asyncio.get_running_loop())

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.stop()
            self._writer = None
        self._readers.shutdown(wait=True)
        for conn in self._reader_conns:
            conn.close()
        self._reader_conns.clear()

    def pending_writes(self) -> int:
        return 0 if self._writer is None else self._writer.pending

    async def write(self, script: Callable[[Tx], R]) -> R:
        assert self._writer is not None, "store is not open"
        return await self._writer.submit(script)

    async def read(self, script: Callable[[Tx], R]) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_sync, script)

    def _read_sync(self, script: Callable[[Tx], R]) -> R:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, fsync=self.fsync)
            self._local.conn = conn
            self._reader_conns.append(conn)
        conn.execute("BEGIN")
        try:
            return script(SqliteTx(conn))
        finally:
            conn.execute("ROLLBACK")
