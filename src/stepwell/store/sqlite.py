"""SQLite backend: WAL, `BEGIN IMMEDIATE`, group commit on one writer thread.

All writes go through a single writer thread that drains every script submitted since its last
commit and runs them in one transaction: with `synchronous=FULL` each commit is an fsync, so
grouping is what lets thousands of runs per second checkpoint durably. Reads use their own
connections (WAL lets them proceed while the writer works).
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from stepwell.core.models import Event, Memo, RunStatus
from stepwell.store.base import (
    NewRun,
    QueueItem,
    RunRow,
    RunState,
    StoreError,
    Tx,
    WaitRow,
)

R = TypeVar("R")
MAX_GROUP = 512
_STOP = object()


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


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
                for statement in sql.split(";"):
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


_RUN_COLUMNS = ("id, function_id, status, event_ids, created_at, started_at, ended_at, output, "
                "error, warnings, parent_run_id, parent_step")


def _run_row(row: sqlite3.Row | tuple[Any, ...]) -> RunRow:
    return RunRow(id=row[0], function_id=row[1], status=row[2], event_ids=loads(row[3]) or [],
                  created_at=row[4], started_at=row[5], ended_at=row[6], output=loads(row[7]),
                  error=loads(row[8]), warnings=loads(row[9]) or [], parent_run_id=row[10],
                  parent_step=row[11])


def _event(row: tuple[Any, ...]) -> Event:
    return Event(name=row[1], data=loads(row[2]), id=row[0], ts=row[4], user=loads(row[3]) or {})


class SqliteTx:
    """`Tx` over one SQLite connection inside an open transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.c = conn

    # --- events ------------------------------------------------------------------------------
    def insert_event(self, event: Event, received_at: int, dedupe_after: int,
                     processed: bool) -> bool:
        cur = self.c.execute(
            "INSERT INTO events (id, name, data, user, ts, received_at, processed) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET name=excluded.name, "
            "data=excluded.data, user=excluded.user, ts=excluded.ts, "
            "received_at=excluded.received_at, processed=excluded.processed "
            "WHERE events.received_at <= ?",
            (event.id, event.name, dumps(event.data), dumps(event.user) if event.user else None,
             event.ts, received_at, int(processed), dedupe_after))
        return cur.rowcount == 1

    def mark_event_processed(self, event_id: str) -> bool:
        cur = self.c.execute("UPDATE events SET processed=1 WHERE id=? AND processed=0",
                             (event_id,))
        return cur.rowcount == 1

    def unprocessed_events(self, received_before: int, limit: int) -> list[Event]:
        rows = self.c.execute(
            "SELECT id, name, data, user, ts FROM events WHERE processed=0 AND received_at < ? "
            "ORDER BY received_at LIMIT ?", (received_before, limit)).fetchall()
        return [_event(r) for r in rows]

    def get_events(self, ids: Sequence[str]) -> list[Event]:
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self.c.execute(
            f"SELECT id, name, data, user, ts FROM events WHERE id IN ({marks})", tuple(ids))
        by_id = {r[0]: _event(r) for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def list_events(self, name: str | None, limit: int) -> list[tuple[Event, int]]:
        sql = "SELECT id, name, data, user, ts, received_at FROM events"
        args: tuple[Any, ...] = ()
        if name:
            sql += " WHERE name = ?"
            args = (name,)
        sql += " ORDER BY received_at DESC LIMIT ?"
        return [(_event(r), r[5]) for r in self.c.execute(sql, (*args, limit))]

    # --- runs --------------------------------------------------------------------------------
    def insert_run(self, run: NewRun) -> None:
        self.c.execute(
            "INSERT INTO runs (id, function_id, status, event_id, event_ids, created_at, "
            "started_at, parent_run_id, parent_step, error, ended_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run.id, run.function_id, run.status, run.event_ids[0] if run.event_ids else None,
             dumps(run.event_ids) if len(run.event_ids) > 1 else None, run.created_at,
             run.started_at,
             run.parent_run_id, run.parent_step, dumps(run.error) if run.error else None,
             run.created_at if run.status == "skipped" else None))

    def start_run(self, run_id: str, now: int) -> bool:
        cur = self.c.execute(
            "UPDATE runs SET status='running', started_at=coalesce(started_at, ?) "
            "WHERE id=? AND status IN ('queued', 'running')", (now, run_id))
        return cur.rowcount == 1

    def finish_run(self, run_id: str, status: RunStatus, now: int, *, output: Any = None,
                   error: dict[str, Any] | None = None) -> bool:
        cur = self.c.execute(
            "UPDATE runs SET status=?, ended_at=?, output=?, error=? "
            "WHERE id=? AND status IN ('queued', 'running')",
            (status, now, None if output is None else dumps(output),
             None if error is None else dumps(error), run_id))
        return cur.rowcount == 1

    def add_run_warning(self, run_id: str, warning: str) -> None:
        row = self.c.execute("SELECT warnings FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            return
        warnings = loads(row[0]) or []
        if warning not in warnings:
            warnings.append(warning)
            self.c.execute("UPDATE runs SET warnings=? WHERE id=?", (dumps(warnings), run_id))

    def get_run(self, run_id: str) -> RunRow | None:
        row = self.c.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id=?", (run_id,)).fetchone()
        return None if row is None else self._with_event(row)

    def _with_event(self, row: tuple[Any, ...]) -> RunRow:
        run = _run_row(row)
        if not run.event_ids:
            first = self.c.execute("SELECT event_id FROM runs WHERE id=?", (run.id,)).fetchone()
            run.event_ids = [first[0]] if first and first[0] else []
        return run

    def list_runs(self, *, event_id: str | None = None, function_id: str | None = None,
                  status: str | None = None, limit: int = 100) -> list[RunRow]:
        where, args = [], []
        for column, value in (("event_id", event_id), ("function_id", function_id),
                              ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = f"SELECT {_RUN_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        return [self._with_event(r) for r in self.c.execute(sql, (*args, limit)).fetchall()]

    def load_run_state(self, run_id: str) -> RunState | None:
        run = self.get_run(run_id)
        if run is None:
            return None
        state = RunState(run=run, events=self.get_events(run.event_ids))
        for r in self.c.execute(
                "SELECT hash, step_id, kind, seq, outcome, fingerprint, due_at, attempts, "
                "started_at, ended_at FROM memos WHERE run_id=?", (run_id,)):
            outcome = loads(r[4])
            state.memos[r[0]] = Memo(
                hash=r[0], step_id=r[1], kind=r[2], seq=r[3],
                data=None if outcome is None else outcome.get("data"),
                error=None if outcome is None else outcome.get("error"), fingerprint=r[5],
                due_at=r[6], attempts=r[7], started_at=r[8], ended_at=r[9],
                pending=outcome is None)
        for h, attempt, error, at in self.c.execute(
                "SELECT hash, attempt, error, at FROM step_failures WHERE run_id=? "
                "ORDER BY attempt", (run_id,)):
            state.failures.setdefault(h, []).append(
                {"attempt": attempt, "error": loads(error), "at": at})
        return state

    # --- steps -------------------------------------------------------------------------------
    def insert_memo(self, run_id: str, memo: Memo) -> bool:
        outcome = None if memo.pending else (
            {"error": memo.error} if memo.error is not None else {"data": memo.data})
        cur = self.c.execute(
            "INSERT INTO memos (run_id, hash, step_id, kind, seq, outcome, fingerprint, due_at, "
            "attempts, started_at, ended_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (run_id, memo.hash, memo.step_id, memo.kind, memo.seq,
             None if outcome is None else dumps(outcome),
             memo.fingerprint, memo.due_at, memo.attempts, memo.started_at, memo.ended_at))
        return cur.rowcount == 1

    def resolve_memo(self, run_id: str, step_hash: str, outcome: dict[str, Any],
                     now: int) -> bool:
        cur = self.c.execute(
            "UPDATE memos SET outcome=?, ended_at=? WHERE run_id=? AND hash=? AND outcome IS NULL",
            (dumps(outcome), now, run_id, step_hash))
        return cur.rowcount == 1

    def insert_step_failure(self, run_id: str, step_hash: str, step_id: str, attempt: int,
                            error: dict[str, Any], at: int) -> None:
        self.c.execute(
            "INSERT INTO step_failures (run_id, hash, step_id, attempt, error, at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (run_id, step_hash, step_id, attempt, dumps(error), at))

    # --- queue -------------------------------------------------------------------------------
    def enqueue(self, kind: str, unique_key: str, due_at: int, *, run_id: str | None = None,
                payload: dict[str, Any] | None = None, owner: str | None = None,
                lease_until: int | None = None) -> int | None:
        row = self.c.execute(
            "INSERT INTO queue (unique_key, kind, run_id, due_at, payload, owner, lease_until) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (unique_key) DO UPDATE SET "
            "due_at = min(queue.due_at, excluded.due_at), "
            "rerun = CASE WHEN queue.owner IS NULL THEN queue.rerun ELSE 1 END, "
            "lease_until = CASE WHEN queue.owner IS NULL THEN excluded.lease_until "
            "ELSE queue.lease_until END, "
            "owner = coalesce(queue.owner, excluded.owner) "
            "RETURNING id, owner",
            (unique_key, kind, run_id, due_at, None if payload is None else dumps(payload),
             owner, lease_until)).fetchone()
        return row[0] if owner is not None and row[1] == owner else None

    def claim_due(self, now: int, owner: str, lease_until: int, limit: int) -> list[QueueItem]:
        rows = self.c.execute(
            "UPDATE queue SET owner=?, lease_until=? WHERE id IN (SELECT id FROM queue "
            "WHERE owner IS NULL AND due_at <= ? ORDER BY due_at, id LIMIT ?) "
            "RETURNING id, kind, unique_key, due_at, run_id, payload",
            (owner, lease_until, now, limit)).fetchall()
        items = [QueueItem(r[0], r[1], r[2], r[3], r[4], loads(r[5])) for r in rows]
        items.sort(key=lambda i: (i.due_at, i.id))
        return items

    def renew_lease(self, item_id: int, owner: str, lease_until: int) -> bool:
        cur = self.c.execute("UPDATE queue SET lease_until=? WHERE id=? AND owner=?",
                             (lease_until, item_id, owner))
        return cur.rowcount == 1

    def renew_leases(self, owner: str, lease_until: int) -> int:
        return self.c.execute("UPDATE queue SET lease_until=? WHERE owner=?",
                              (lease_until, owner)).rowcount

    def release_item(self, item_id: int, owner: str, due_at: int | None, now: int) -> bool:
        if due_at is None:
            cur = self.c.execute("DELETE FROM queue WHERE id=? AND owner=? AND rerun=0",
                                 (item_id, owner))
            if cur.rowcount == 1:
                return True
            due_at = now
        cur = self.c.execute(
            "UPDATE queue SET owner=NULL, lease_until=NULL, "
            "due_at = CASE WHEN rerun=1 THEN min(?, ?) ELSE ? END, rerun=0 "
            "WHERE id=? AND owner=?", (due_at, now, due_at, item_id, owner))
        return cur.rowcount == 1

    def delete_items(self, *, run_id: str) -> None:
        self.c.execute("DELETE FROM queue WHERE run_id=?", (run_id,))

    def release_expired_leases(self, wall_now: int) -> int:
        return self.c.execute(
            "UPDATE queue SET owner=NULL, lease_until=NULL WHERE owner IS NOT NULL "
            "AND lease_until < ?", (wall_now,)).rowcount

    def lease_owners(self) -> list[str]:
        rows = self.c.execute("SELECT DISTINCT owner FROM queue WHERE owner IS NOT NULL")
        return [r[0] for r in rows]

    def release_leases_of(self, owner: str) -> int:
        return self.c.execute("UPDATE queue SET owner=NULL, lease_until=NULL WHERE owner=?",
                              (owner,)).rowcount

    def next_due_at(self) -> int | None:
        row = self.c.execute(
            "SELECT due_at FROM queue WHERE owner IS NULL ORDER BY due_at LIMIT 1").fetchone()
        return None if row is None else int(row[0])

    def count_ready(self, now: int) -> int:
        row = self.c.execute(
            "SELECT count(*) FROM queue WHERE owner IS NULL AND due_at <= ?", (now,)).fetchone()
        return int(row[0])

    # --- waits -------------------------------------------------------------------------------
    def insert_wait(self, wait: WaitRow) -> None:
        self.c.execute(
            "INSERT INTO waits (run_id, kind, step_hash, event_name, match_key, expr, event_ctx, "
            "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (wait.run_id, wait.kind, wait.step_hash, wait.event_name, wait.match_key, wait.expr,
             None if wait.event_ctx is None else dumps(wait.event_ctx), wait.expires_at))

    def match_paths(self, event_name: str) -> list[str]:
        rows = self.c.execute(
            "SELECT DISTINCT substr(match_key, 1, instr(match_key, '=') - 1) FROM waits "
            "WHERE event_name=? AND match_key IS NOT NULL", (event_name,))
        return [r[0] for r in rows]

    def find_waits(self, event_name: str, match_keys: Sequence[str]) -> list[WaitRow]:
        marks = ",".join("?" * len(match_keys))
        cond = f"(match_key IS NULL OR match_key IN ({marks}))" if match_keys else (
            "match_key IS NULL")
        rows = self.c.execute(
            "SELECT id, run_id, kind, step_hash, event_name, match_key, expr, event_ctx, "
            f"expires_at FROM waits WHERE event_name=? AND {cond} ORDER BY id",
            (event_name, *match_keys))
        return [WaitRow(id=r[0], run_id=r[1], kind=r[2], step_hash=r[3], event_name=r[4],
                        match_key=r[5], expr=r[6], event_ctx=loads(r[7]), expires_at=r[8])
                for r in rows]

    def delete_wait(self, wait_id: int) -> bool:
        return self.c.execute("DELETE FROM waits WHERE id=?", (wait_id,)).rowcount == 1

    def delete_step_wait(self, run_id: str, step_hash: str) -> bool:
        return self.c.execute("DELETE FROM waits WHERE run_id=? AND step_hash=?",
                              (run_id, step_hash)).rowcount > 0

    def delete_run_waits(self, run_id: str) -> None:
        self.c.execute("DELETE FROM waits WHERE run_id=?", (run_id,))
