"""SQLite backend: WAL, `BEGIN IMMEDIATE`, group commit on one writer thread.

All writes go through a single writer thread that drains every script submitted since its last
commit and runs them in one transaction: with `synchronous=FULL` each commit is an fsync, so
grouping is what lets thousands of runs per second checkpoint durably. Reads use their own
connections (WAL lets them proceed while the writer works).
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from stepwell.store.base import StoreError, Tx
from stepwell.store.sqlite_tx import SqliteTx

R = TypeVar("R")
MAX_GROUP = 512
_STOP = object()


def sqlite_path(url: str) -> str:
    """`sqlite:///rel.db` -> `rel.db`, `sqlite:////abs.db` -> `/abs.db`; a bare path is kept."""
    if url.startswith("sqlite://"):
        return url[len("sqlite:///"):] if url.startswith("sqlite:///") else url[len("sqlite://"):]
    return url


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("stepwell.store") / "migrations" / "sqlite"
    out = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            out.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(out)


SCHEMA_VERSION = max(v for v, _ in _migrations())


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
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"this database has schema version {current}, written by a newer stepwell; "
                f"this stepwell knows up to version {SCHEMA_VERSION}: upgrade stepwell")
        for version, sql in _migrations():
            if version > current:
                code = "\n".join(line for line in sql.splitlines()
                                 if not line.lstrip().startswith("--"))
                for statement in code.split(";"):
                    if statement.strip():
                        conn.execute(statement)
        conn.execute("INSERT OR REPLACE INTO stepwell_meta VALUES ('schema_version', ?)",
                     (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class SqliteStore:
    """The embedded backend. `fsync=True` is `synchronous=FULL`: every commit reaches the disk."""

    def __init__(self, url: str, *, fsync: bool = True) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self.fsync = fsync
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending = 0
        self._writer: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="stepwell-read")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = _connect(self.path, fsync=self.fsync)
            migrate(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        self._writer = threading.Thread(target=self._write_loop, args=(conn,),
                                        name="stepwell-writer", daemon=True)
        self._writer.start()

    async def close(self) -> None:
        if self._writer is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        self._readers.shutdown(wait=True)
        for conn in self._reader_conns:
            conn.close()
        self._reader_conns.clear()

    def pending_writes(self) -> int:
        return self._pending

    async def write(self, script: Callable[[Tx], R]) -> R:
        assert self._loop is not None, "store is not open"
        future: asyncio.Future[R] = self._loop.create_future()
        self._pending += 1
        self._queue.put((script, future))
        try:
            return await future
        finally:
            self._pending -= 1

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

    # --- the writer thread ------------------------------------------------------------------

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        tx = SqliteTx(conn)
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                batch = [first]
                stop = False
                while len(batch) < MAX_GROUP:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)
                self._commit_group(conn, tx, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _commit_group(self, conn: sqlite3.Connection, tx: SqliteTx,
                      batch: list[tuple[Callable[[Tx], Any], asyncio.Future[Any]]]) -> None:
        results: list[tuple[asyncio.Future[Any], bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for script, future in batch:
                results.append((future, True, script(tx)))
            conn.execute("COMMIT")
        except Exception:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            # One script failed: run each alone so the others still commit and the failing one
            # gets its own exception.
            results = [(future, *self._run_alone(conn, tx, script)) for script, future in batch]
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_resolve, results)

    @staticmethod
    def _run_alone(conn: sqlite3.Connection, tx: SqliteTx,
                   script: Callable[[Tx], Any]) -> tuple[bool, Any]:
        try:
            conn.execute("BEGIN IMMEDIATE")
            value = script(tx)
            conn.execute("COMMIT")
            return True, value
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return False, exc


def _resolve(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in results:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

