"""Postgres connections that survive the database going away: connect, classify errors, back off,
and the writer side of group commit.

A worker must outlive a Postgres restart or a network blip: every operation that fails because
the connection broke (or because Postgres chose this transaction as a deadlock or serialization
victim) is retried, with backoff, until it succeeds or the outage has lasted longer than the
store's `outage_seconds`; only then does the caller get a `StoreError`. Retrying is safe because
transaction scripts are re-runnable by contract (`store.base`).

The one subtle case is a connection lost *while COMMIT was in flight*: the group may or may not
have committed. Re-running it blindly could, for instance, find its own memo already there and
conclude another worker committed the step. So the writer reads the transaction's id before
sending COMMIT and, after reconnecting, asks Postgres what became of it (`pg_xact_status`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from stepwell.core.storage import StorageFull
from stepwell.core.urls import redact
from stepwell.store.base import StoreError, Tx
from stepwell.store.postgres_tx import (
    WORK_CHANNEL,
    Conn,
    Misprediction,
    PostgresTx,
    WriterState,
)

log = logging.getLogger("stepwell.store.postgres")
MIN_SERVER_VERSION = 130000        # pg_current_xact_id_if_assigned, pg_xact_status(xid8)
CONNECT_TIMEOUT_S = 10


def reason(exc: BaseException) -> str:
    """A driver error as one line (libpq's messages span several)."""
    text = " ".join(str(exc).split())
    return text.removeprefix("connection failed: ") or type(exc).__name__


def connect(url: str, **settings: Any) -> Conn:
    """An autocommit connection (transactions are begun explicitly, so BEGIN and COMMIT can be
    pipelined with the statements around them)."""
    params: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S,
                              "application_name": "stepwell"}
    params.update(conninfo_to_dict(url))
    params.update(settings)
    conn: Conn = psycopg.connect(make_conninfo(**params), autocommit=True)
    return conn


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: the connection broke, the server is restarting, or Postgres aborted the
    transaction as a deadlock/serialization victim (all `OperationalError`s in psycopg)."""
    return isinstance(exc, psycopg.OperationalError)


def disk_full(url: str, exc: BaseException) -> StorageFull:
    """Postgres could not write (SQLSTATE 53100): failed at once rather than retried as an
    outage, so a request learns it now (HTTP 507) and the engine defers its work."""
    return StorageFull(f"the disk of Postgres at {redact(url)} is full ({reason(exc)}); "
                       "nothing was written: free space, then retry")


def is_broken(conn: Conn | None) -> bool:
    return conn is None or conn.closed or conn.broken


def rollback(conn: Conn | None) -> None:
    """End a failed transaction so the connection can be reused (if it still works)."""
    if is_broken(conn):
        return
    assert conn is not None
    try:
        if conn.info.transaction_status != pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
    except psycopg.Error:
        conn.close()


class Outage:
    """Backoff across consecutive transient failures; gives up after `limit` seconds."""

    def __init__(self, url: str, limit: float, what: str) -> None:
        self.url = url
        self.limit = limit
        self.what = what
        self.started = time.monotonic()
        self.delay = 0.02
        self.failures = 0

    def wait(self, exc: BaseException) -> None:
        self.failures += 1
        elapsed = time.monotonic() - self.started
        if elapsed > self.limit:
            raise StoreError(f"{self.what} failed: Postgres at {redact(self.url)} has been "
                             f"unavailable for {elapsed:.0f}s: {reason(exc)}") from exc
        if self.failures == 1 and not isinstance(exc, psycopg.errors.TransactionRollback):
            log.warning("%s: %s; retrying", self.what, reason(exc))
        elif self.failures % 10 == 0:
            log.warning("%s: still failing after %.1fs: %s", self.what, elapsed, reason(exc))
        time.sleep(self.delay * random.uniform(0.5, 1.0))
        self.delay = min(self.delay * 2, 2.0)

    def recovered(self) -> None:
        if self.failures and self.failures > 1:
            log.warning("%s: recovered after %d retries", self.what, self.failures)


class PostgresWriter:
    """One writer thread's transactor (`store.groupcommit.Transactor`): a dedicated connection,
    re-opened when it breaks; a group is retried until it commits or the outage lasts too long.
    """

    def __init__(self, url: str, *, fsync: bool, outage_seconds: float, state: WriterState,
                 guess: bool = True, conn: Conn | None = None) -> None:
        self.url = url
        self.guess = guess
        self.state = state
        self.mispredictions = 0
        self.fsync = fsync
        self.outage_seconds = outage_seconds
        self._conn = conn
        if conn is not None:
            self._configure(conn)

    def _configure(self, conn: Conn) -> None:
        if not self.fsync:
            # The Postgres equivalent of SQLite's synchronous=NORMAL: commits are not waited
            # for on disk (a crash of Postgres may lose the last few; never corrupts).
            conn.execute("SET synchronous_commit = off")

    def _connection(self) -> Conn:
        if is_broken(self._conn):
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            conn = connect(self.url)
            self._configure(conn)
            self._conn = conn
        assert self._conn is not None
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def run(self, scripts: Sequence[Callable[[Tx], Any]]) -> list[Any]:
        outage: Outage | None = None
        optimistic = self.guess
        while True:
            conn: Conn | None = None
            try:
                conn = self._connection()
                values = self._attempt(conn, scripts, optimistic)
            except Misprediction as wrong:
                # A guessed answer was wrong (a lease lost, a duplicate event...): run the group
                # again, waiting for every answer this time.
                rollback(conn)
                log.debug("group of %d re-run without guessing: %s", len(scripts), wrong)
                self.state.guessed_wrong(str(wrong))
                self.mispredictions += 1
                optimistic = False
                continue
            except Exception as exc:
                rollback(conn)
                if isinstance(exc, psycopg.errors.DiskFull):
                    raise disk_full(self.url, exc) from exc
                if not is_transient(exc):
                    raise
                outage = outage or Outage(self.url, self.outage_seconds, "writing to Postgres")
                outage.wait(exc)
                continue
            if outage is not None:
                outage.recovered()
            return values

    def _attempt(self, conn: Conn, scripts: Sequence[Callable[[Tx], Any]],
                 optimistic: bool) -> list[Any]:
        xid: str | None = None
        committing = False
        try:
            with conn.pipeline() as pipeline:
                conn.execute("BEGIN")
                tx = PostgresTx(conn, pipeline, writable=True, optimistic=optimistic,
                                state=self.state)
                values = [script(tx) for script in scripts]
                xid = tx.finish()
                if tx.notify:
                    conn.execute("SELECT pg_notify(%s, '')", (WORK_CHANNEL,))
                committing = True
                self._commit(conn)
            return values
        except psycopg.Error as exc:
            if committing and xid is not None:
                # COMMIT was sent but its answer was not read: ask on a new connection.
                conn.close()
                if self._outcome(xid, exc) == "committed":
                    return values
                raise psycopg.OperationalError(f"commit interrupted: {reason(exc)}") from exc
            raise

    def _commit(self, conn: Conn) -> None:
        """Send COMMIT (its answer is read when the pipeline ends). Tests override it to lose
        the connection at the worst moment."""
        conn.execute("COMMIT")

    def _outcome(self, xid: str, lost: BaseException) -> str:
        """What became of a transaction whose COMMIT was cut off: reconnect and ask."""
        outage = Outage(self.url, self.outage_seconds, "checking an interrupted commit")
        exc: BaseException = lost
        while True:
            outage.wait(exc)
            try:
                row = self._connection().execute("SELECT pg_xact_status(%s::xid8)",
                                                 (xid,)).fetchone()
            except psycopg.OperationalError as again:
                exc = again
                continue
            status = None if row is None else row[0]
            if status != "in progress":
                log.warning("a commit was interrupted by a lost connection; it %s",
                            "went through" if status == "committed" else "did not")
                return str(status)
