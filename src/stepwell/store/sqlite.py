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

from stepwell.core.storage import StorageBusy, StorageFailure, StorageFull
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


# How long a transaction waits for SQLite's write lock when another process holds it (another
# stepwell on the same file, a backup, the sqlite3 shell). Past it the writes of the waiting
# group fail with StorageBusy (HTTP 503 with Retry-After) instead of holding every request.
LOCK_WAIT_MS = 5_000
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_FULL = 5, 6, 13
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def _connect(path: str, *, fsync: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           timeout=LOCK_WAIT_MS / 1000)
    if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
        # A new database: keep a map of its pages so that retention can hand the pages it
        # frees back to the file system (`incremental_vacuum` after `prune`). Only possible
        # before the first table (and before WAL is set); an older database keeps NONE until
        # an offline VACUUM (docs/operations.md).
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
    conn.execute(f"PRAGMA busy_timeout={LOCK_WAIT_MS}")
    conn.execute("PRAGMA foreign_keys=OFF")
    return conn


def storage_failure(exc: sqlite3.Error, path: str) -> StorageFailure | None:
    """The store's own failure for an SQLite error that is the database's condition rather
    than the script's fault (a full disk, a lock held elsewhere), or None."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == _SQLITE_FULL:
        return StorageFull(f"the disk holding the SQLite database {path!r} is full (SQLite: "
                           f"{exc}); nothing was written: free space, then retry")
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StorageBusy(f"the SQLite database {path!r} is locked by another process "
                           f"(waited {LOCK_WAIT_MS // 1000} s for its write lock); nothing was "
                           "written: retry, and run one stepwell per SQLite file")
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return StoreError(f"the SQLite database {path!r} is corrupted ({exc}): restore it from "
                          "a backup")
    return None


def quick_check(conn: sqlite3.Connection, path: str) -> None:
    """Refuse a database with corrupted pages before anything is acknowledged into it.
    `quick_check` reads every page, without the index cross-checks of `integrity_check`: it
    is O(size), a few seconds per GB (7 s for a 1.1 GB file on a busy 2-core machine), paid
    once per start."""
    problems = [" ".join(str(row[0]).split()) for row in conn.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise StoreError(f"the SQLite database {path!r} is corrupted (PRAGMA quick_check: "
                         f"{'; '.join(problems)}): refusing to use it; restore it from a backup "
                         "or repair it with the sqlite3 shell's .recover")


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

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self.conn = conn
        self.path = path
        self.tx = SqliteTx(conn)

    def run(self, scripts: Sequence[Callable[[Tx], Any]]) -> list[Any]:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                values = [script(self.tx) for script in scripts]
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            failure = storage_failure(exc, self.path)
            if failure is None:
                raise
            raise failure from exc
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
            quick_check(conn, self.path)
            migrate(conn)
        except sqlite3.Error as exc:
            failure = storage_failure(exc, self.path)
            if isinstance(failure, StoreError):
                raise failure from exc
            raise StoreError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        # A closed store can be opened again: fresh reader threads and connections.
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="stepwell-read")
        self._local = threading.local()
        # One writer: SQLite has a single write lock, so a second writer would only wait on it.
        self._writer = GroupCommit([_SqliteTransactor(conn, self.path)], name="stepwell-writer")
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
        try:
            conn.execute("BEGIN")
            try:
                return script(SqliteTx(conn))
            finally:
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            failure = storage_failure(exc, self.path)
            if failure is None:
                raise
            raise failure from exc
