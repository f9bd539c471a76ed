"""Postgres backend: many worker processes on many hosts, coordinating through one database.

- Writes: group commit (`store.groupcommit`) on dedicated writer connections. Each group is one
  READ COMMITTED transaction in pipeline mode; `postgres_tx` explains how every
  read-modify-write stays correct with many processes writing at once, and `postgres_conn` how
  a group survives a lost connection, a deadlock victim or a Postgres restart.
- Reads: a small connection pool; a read script sees one consistent snapshot, like SQLite's
  read transactions: a script of one statement (most are) runs alone in autocommit, others in a
  REPEATABLE READ READ ONLY transaction.
- Wake-ups: a transaction that made work claimable NOTIFYs `stepwell_work` (delivered at
  commit); `on_ready_work` LISTENs on a connection of its own and tells the engine, so idle
  workers pick new work up at once. It is only a hint: workers still poll.
- Schema: versioned migrations in `migrations/postgres`, applied at start under an advisory lock
  (several processes may start together); a database from a newer stepwell is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from stepwell.core.urls import redact
from stepwell.store.base import StoreError, Tx, migration_files, pending_migrations
from stepwell.store.groupcommit import GroupCommit
from stepwell.store.postgres_conn import (
    MIN_SERVER_VERSION,
    Outage,
    PostgresWriter,
    connect,
    is_transient,
    reason,
    rollback,
)
from stepwell.store.postgres_sql import NeedsTransaction
from stepwell.store.postgres_tx import WORK_CHANNEL, Conn, PostgresTx, WriterState

R = TypeVar("R")
log = logging.getLogger("stepwell.store.postgres")


SCHEMA_VERSION = migration_files("postgres")[-1][0]


def migrate(conn: Conn) -> int:
    """Apply pending migrations in one transaction, under an advisory lock so that processes
    starting together apply them once; refuse a database written by a newer stepwell.
    Returns the schema version found before migrating."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('stepwell:migrate', 0))")
        conn.execute("CREATE TABLE IF NOT EXISTS stepwell_meta "
                     "(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = conn.execute(
            "SELECT value FROM stepwell_meta WHERE key='schema_version'").fetchone()
        current = int(row[0]) if row else 0
        latest, pending = pending_migrations("postgres", current)
        for sql in pending:
            conn.execute(sql.encode())           # several statements: simple query protocol
        conn.execute("INSERT INTO stepwell_meta VALUES ('schema_version', %s) "
                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                     (str(latest),))
    return current


def _configure_reader(conn: Conn) -> None:
    """Reads cannot write, even by mistake."""
    conn.execute("SET default_transaction_read_only = on")


class PostgresStore:
    """The scale-out backend, for `postgresql://user:password@host:port/db` URLs.

    `writers` is the number of writer connections of this process. One is the default, as with
    SQLite: with guessed answers and bulk writes a single writer is not the bottleneck, and it
    keeps this process's claims and slot releases in one order (two writers could let a claim
    pick its candidates while another transaction frees a slot for a higher-priority item).
    Scale out with processes instead. `readers` bounds the read pool. `guess=False` (or the
    environment variable `STEPWELL_PG_GUESS=0`) makes writers wait for every answer instead of
    guessing and buffering (see `postgres_sql`): slower, for diagnosis and tests.
    `outage_seconds` is how long an operation keeps retrying through a lost database before it
    fails with `StoreError`. `fsync=False` turns `synchronous_commit` off for this store's
    writes.
    """

    def __init__(self, url: str, *, fsync: bool = True, writers: int = 1, readers: int = 4,
                 outage_seconds: float = 120.0, guess: bool | None = None) -> None:
        self.url = url
        self.guess = os.environ.get("STEPWELL_PG_GUESS", "1") != "0" if guess is None else guess
        self.fsync = fsync
        self.writers = writers
        self.readers = readers
        self.outage_seconds = outage_seconds
        self._writer: GroupCommit | None = None
        self._pool: ConnectionPool[Conn] | None = None
        self._read_threads: ThreadPoolExecutor | None = None
        self._wake_callbacks: list[Callable[[], None]] = []
        self._listener: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        first = await asyncio.to_thread(self._connect_and_migrate)
        state = WriterState()
        writers = [PostgresWriter(self.url, fsync=self.fsync,
                                  outage_seconds=self.outage_seconds, state=state,
                                  guess=self.guess,
                                  conn=first if index == 0 else None)
                   for index in range(self.writers)]
        self._pool = ConnectionPool(self.url, min_size=1, max_size=self.readers, open=False,
                                    kwargs={"autocommit": True, "connect_timeout": 10,
                                            "application_name": "stepwell"},
                                    configure=_configure_reader, name="stepwell-read")
        await asyncio.to_thread(self._pool.open, True, 30.0)
        self._read_threads = ThreadPoolExecutor(self.readers, thread_name_prefix="stepwell-read")
        self._writer = GroupCommit(writers, name="stepwell-writer")
        self._writer.start(asyncio.get_running_loop())

    def _connect_and_migrate(self) -> Conn:
        """The first connection: any problem with the URL or the server is reported here,
        once, as a `StoreError` naming the URL (without its password) and the reason."""
        where = redact(self.url)
        outage = Outage(self.url, self.outage_seconds, "connecting to Postgres")
        while True:
            try:
                conn = connect(self.url)
                break
            except psycopg.Error as exc:
                # Postgres says it is starting up or shutting down (a restart): wait for it.
                # Anything else (refused, unknown host or database, bad credentials) is a
                # configuration problem, reported at once.
                if "the database system is" not in str(exc):
                    raise StoreError(f"cannot connect to Postgres at {where}: "
                                     f"{reason(exc)}") from exc
                outage.wait(exc)
        try:
            if conn.info.server_version < MIN_SERVER_VERSION:
                raise StoreError(f"Postgres at {where} is version {conn.info.server_version}; "
                                 "stepwell needs Postgres 13 or newer")
            migrate(conn)
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(f"cannot migrate the stepwell schema in Postgres at {where}: "
                             f"{reason(exc)}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._writer is not None:
            await self._writer.stop()
            self._writer = None
        if self._read_threads is not None:
            self._read_threads.shutdown(wait=True)
            self._read_threads = None
        if self._pool is not None:
            await asyncio.to_thread(self._pool.close)
            self._pool = None

    # --- the Store interface -----------------------------------------------------------------

    def pending_writes(self) -> int:
        return 0 if self._writer is None else self._writer.pending

    async def write(self, script: Callable[[Tx], R]) -> R:
        assert self._writer is not None, "store is not open"
        return await self._writer.submit(script)

    async def read(self, script: Callable[[Tx], R]) -> R:
        assert self._read_threads is not None, "store is not open"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_threads, self._read_sync, script)

    def _read_sync(self, script: Callable[[Tx], R]) -> R:
        assert self._pool is not None
        outage: Outage | None = None
        while True:
            try:
                with self._pool.connection(timeout=5.0) as conn:
                    try:
                        try:
                            # Most reads are one statement: no transaction needed.
                            value = script(PostgresTx(conn, None, writable=False))
                        except NeedsTransaction:
                            with conn.pipeline() as pipeline:
                                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                                value = script(PostgresTx(conn, pipeline, writable=False))
                                conn.execute("COMMIT")
                    except BaseException:
                        rollback(conn)
                        raise
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # After a restart every pooled connection is dead: drop them all at once.
                with contextlib.suppress(Exception):
                    self._pool.check()
                outage = outage or Outage(self.url, self.outage_seconds, "reading from Postgres")
                outage.wait(exc)
                continue
            if outage is not None:
                outage.recovered()
            return value

    # --- LISTEN/NOTIFY -----------------------------------------------------------------------

    def on_ready_work(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) when any process commits work that may be ready
        to claim, and after a lost listening connection is back (a notification may have been
        missed meanwhile). Idle workers use it to poll at once instead of at their next tick."""
        self._wake_callbacks.append(callback)
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="stepwell-listen")

    def _wake(self) -> None:
        for callback in self._wake_callbacks:
            callback()

    async def _listen(self) -> None:
        delay = 0.05
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=10,
                    application_name="stepwell-listen")
            except psycopg.Error as exc:
                log.warning("LISTEN connection to %s failed (%s); polling meanwhile",
                            redact(self.url), reason(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            try:
                async with conn:
                    await conn.execute(f"LISTEN {WORK_CHANNEL}")
                    delay = 0.05
                    self._wake()
                    async for _ in conn.notifies():
                        self._wake()
            except psycopg.Error as exc:
                log.info("LISTEN connection lost (%s); reconnecting", reason(exc))
                await asyncio.sleep(delay)
