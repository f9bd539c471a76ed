"""The plumbing under `PostgresTx`: pipelined statements, guessed answers, bulk writes.

A Python client spends tens of microseconds per statement (building a cursor, adapting the
arguments), and a round trip to the server costs about a hundred more: at a dozen statements per
run that, not Postgres, caps throughput. So a writer's transaction works in three tiers:

- every statement is *pipelined* (the connection is in pipeline mode): it is sent at once and
  its answer is read only when someone needs it;
- the hot compare-and-set operations are *guessed* (`optimistic=True`): renewing a lease,
  inserting a memo, finishing a run... almost always succeed, so the script is told they did,
  and every guess is checked in `finish()`, just before COMMIT. A wrong guess raises
  `Misprediction`; the writer rolls back and runs the group again without guessing, so the
  transaction that commits only ever acted on true answers;
- guessed and answer-less writes are *buffered* per kind and sent as one statement per kind over
  arrays (`unnest`), so a group of hundreds of checkpoints costs a handful of statements.
  Buffers are flushed, in a fixed order (`KINDS`), before any other statement touching their
  table and at `finish()`, so every read sees the writes made before it in the transaction.
  Within one flush, writes of different scripts may be applied in kind order rather than script
  order: that is equivalent to running those scripts in another order (they are concurrent,
  any order is valid), and a reordering that changed an answer is caught by the checks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from stepwell.store.queue_rules import POSTGRES, rearm_set
from stepwell.store.rows import FAILURES, MEMOS, QUEUE, RUNS, WAITS, Columns, events_table, names

Row = tuple[Any, ...]
Conn = psycopg.Connection[Row]
Cursor = psycopg.Cursor[Row]

# Notified (in the committing transaction, so delivered at commit) when work may have become
# claimable: idle workers LISTEN on it and poll at once.
WORK_CHANNEL = "stepwell_work"


class Misprediction(Exception):
    """A guessed answer was wrong: the transaction must be rolled back and run again."""


@dataclass(frozen=True, slots=True)
class Bulk:
    """One kind of buffered write: a statement over one array per column.

    With `check`, the statement returns the key (the first `keys` columns) of every row it
    changed, and all buffered rows must be among them. With `wake`, it returns (after the key,
    if any) `ck1, ck2, owner` of each queue item it freed, for `PostgresTx._wake`.
    """

    name: str
    table: str
    sql: str
    check: bool = False
    keys: int = 1
    wake: bool = False


def _arrays(*types: str) -> str:
    return ", ".join(f"%s::{t}[]" for t in types)


def _insert(table: str, columns: Columns) -> str:
    """Insert one row per array element; the columns and their types are `rows`'."""
    return (f"INSERT INTO {table} ({names(columns)}) "
            f"SELECT * FROM unnest({_arrays(*(t for _, t in columns))})")


# In flush order: for one table, the order the hot scripts perform these operations in (a lease
# is renewed before the item is released or deleted; a memo is inserted before it is resolved).
KINDS: list[Bulk] = [
    # New events only (a duplicate id is not inserted, and the strict re-run applies the
    # de-duplication window to it).
    Bulk("event", "events",
         _insert("events", events_table("user_data"))
         + " ON CONFLICT (id) DO NOTHING RETURNING id", check=True),
    Bulk("lease", "queue",
         "UPDATE queue SET lease_until = v.until "
         f"FROM unnest({_arrays('bigint', 'text', 'bigint')}) AS v(id, owner, until) "
         "WHERE queue.id = v.id AND queue.owner = v.owner RETURNING queue.id", check=True),
    Bulk("run", "runs", _insert("runs", RUNS)),
    Bulk("new_item", "queue",
         _insert("queue", (("id", "bigint"), *QUEUE)).replace(
             ") SELECT", ") OVERRIDING SYSTEM VALUE SELECT", 1)
         + " ON CONFLICT (unique_key) DO NOTHING RETURNING id", check=True),
    Bulk("start", "runs",
         "UPDATE runs SET status = 'running', started_at = coalesce(runs.started_at, v.now) "
         f"FROM unnest({_arrays('text', 'bigint')}) AS v(id, now) "
         "WHERE runs.id = v.id AND runs.status IN ('queued', 'running') RETURNING runs.id",
         check=True),
    Bulk("memo", "memos",
         _insert("memos", MEMOS) + " ON CONFLICT DO NOTHING RETURNING run_id, hash",
         check=True, keys=2),
    Bulk("resolve", "memos",
         "UPDATE memos SET outcome = v.outcome, ended_at = v.now "
         f"FROM unnest({_arrays('text', 'text', 'text', 'bigint')}) AS v(run_id, hash, "
         "outcome, now) WHERE memos.run_id = v.run_id AND memos.hash = v.hash "
         "AND memos.outcome IS NULL RETURNING memos.run_id, memos.hash", check=True, keys=2),
    Bulk("failure", "step_failures",
         _insert("step_failures", FAILURES) + " ON CONFLICT DO NOTHING"),
    # Failed attempts stop marking their run `retrying` (schema v22): a step's once it records
    # a memo, a run's when it ends (after "failure": a final failure inserts both).
    Bulk("settle_step", "step_failures",
         "UPDATE step_failures SET unresolved = NULL "
         f"FROM unnest({_arrays('text', 'text')}) AS v(run_id, hash) "
         "WHERE step_failures.run_id = v.run_id AND step_failures.hash = v.hash "
         "AND step_failures.unresolved IS NOT NULL"),
    Bulk("wait", "waits", _insert("waits", WAITS)),
    Bulk("take_wait", "waits",
         f"DELETE FROM waits WHERE id = ANY({_arrays('bigint')}) RETURNING id", check=True),
    Bulk("finish", "runs",
         "UPDATE runs SET status = v.status, ended_at = v.now, output = v.output, "
         "error = v.error FROM unnest("
         + _arrays("text", "text", "bigint", "text", "text")
         + ") AS v(id, status, now, output, error) "
         "WHERE runs.id = v.id AND runs.status IN ('queued', 'running') RETURNING runs.id",
         check=True),
    Bulk("settle_run", "step_failures",
         f"UPDATE step_failures SET unresolved = NULL WHERE run_id = ANY({_arrays('text')}) "
         "AND unresolved IS NOT NULL"),
    Bulk("release", "queue",
         "DELETE FROM queue USING unnest(" + _arrays("bigint", "text") + ") AS v(id, owner) "
         "WHERE queue.id = v.id AND queue.owner = v.owner AND NOT queue.rerun "
         "RETURNING queue.id, queue.ck1, queue.ck2, queue.owner", check=True, wake=True),
    Bulk("rearm", "queue",
         f"UPDATE queue SET {rearm_set(POSTGRES, due='v.due', now='v.now', timer='v.timer')} "
         "FROM unnest(" + _arrays("bigint", "text", "bigint", "bigint", "boolean")
         + ") AS v(id, owner, due, now, timer) WHERE queue.id = v.id AND queue.owner = v.owner "
         "RETURNING queue.id, queue.ck1, queue.ck2, v.owner", check=True, wake=True),
    Bulk("drop_items", "queue",
         f"DELETE FROM queue WHERE run_id = ANY({_arrays('text')}) "
         "RETURNING ck1, ck2, owner", keys=0, wake=True),
    Bulk("drop_waits", "waits", f"DELETE FROM waits WHERE run_id = ANY({_arrays('text')})"),
]


class WriterState:
    """What a store's writers carry from one transaction to the next, to guess well.

    - Queue item ids, reserved from the table's sequence in blocks, so that a buffered insert
      knows its new item's id without an answer from the server (ids stay unique across
      processes: each comes from `nextval`).
    - Event names that matched no pending wait the last few times they were looked up: for
      those, "no waits" is guessed (and checked), which saves ingesting an event its one round
      trip. One wrong guess for a name stops the guessing for it until it is quiet again.
    """

    ID_BLOCK = 256
    QUIET_AFTER = 3
    MAX_NAMES = 10_000

    def __init__(self) -> None:
        self._free: list[int] = []
        self._lock = threading.Lock()
        self._empty_lookups: dict[str, int] = {}

    def take_id(self, pipe: Pipe) -> int:
        with self._lock:
            if not self._free:
                rows = pipe._rows("SELECT nextval(pg_get_serial_sequence('queue', 'id')) "
                                  "FROM generate_series(1, %s)", (self.ID_BLOCK,), tables=())
                self._free = sorted((int(r[0]) for r in rows), reverse=True)
            return self._free.pop()

    def quiet(self, event_name: str) -> bool:
        return self._empty_lookups.get(event_name, 0) >= self.QUIET_AFTER

    def looked_up(self, event_name: str, found: bool) -> None:
        if found:
            self._empty_lookups.pop(event_name, None)
            return
        if len(self._empty_lookups) >= self.MAX_NAMES:
            self._empty_lookups.clear()
        self._empty_lookups[event_name] = self._empty_lookups.get(event_name, 0) + 1

    def guessed_wrong(self, what: str) -> None:
        if what.startswith("waits:"):
            self._empty_lookups.pop(what.removeprefix("waits:"), None)


class NeedsTransaction(BaseException):
    """A single-statement read issued a second statement: run it again in a transaction.
    (A BaseException, so that no `except Exception` in a script can swallow it.)"""


class Pipe:
    """Statements of one transaction over a connection in pipeline mode (see module doc).

    `writable` is False for read-only snapshots (no advisory locks are taken there).
    `optimistic` (writers, with their shared `state`) guesses and buffers; `finish()` must
    then be called before COMMIT.

    Without a pipeline (`pipeline=None`, reads only) the Tx runs one statement, in autocommit:
    a single statement is its own consistent snapshot, and this costs a third of the client time
    of a pipelined transaction. A second statement raises `NeedsTransaction`, and the store runs
    the read again in a real (pipelined, REPEATABLE READ) transaction.
    """

    def __init__(self, conn: Conn, pipeline: psycopg.Pipeline | None, *, writable: bool,
                 optimistic: bool = False, state: WriterState | None = None) -> None:
        self.c = conn
        self.p = pipeline
        self._statements = 0
        self.writable = writable
        self.state = state
        self.optimistic = optimistic and writable and state is not None
        self.notify = False
        self.new_runs: set[str] = set()     # inserted by this transaction (buffered)
        self._locked: set[str] = set()
        self._buffers: dict[str, list[Row]] = {}
        self._checks: list[tuple[Cursor, Callable[[Cursor], bool], str]] = []
        self._bulk_results: list[tuple[Cursor, Bulk, set[Row]]] = []
        self._after: list[tuple[Cursor, Callable[[list[Row]], None]]] = []
        self._quiet_names: set[str] = set()     # guessed to have no pending waits

    # --- sending -----------------------------------------------------------------------------
    def _send(self, sql: str, args: Sequence[Any] = (), *,
              tables: Sequence[str] | None = None) -> Cursor:
        """Queue a statement (its answer is read later, or never). Buffered writes to `tables`
        (all tables if None) are flushed first, so the statement sees them."""
        if self._buffers:
            self.flush(tables)
        if self.p is None:
            self._statements += 1
            if self._statements > 1:
                raise NeedsTransaction()
        return self.c.execute(sql, args)

    def _rows(self, sql: str, args: Sequence[Any] = (), *,
              tables: Sequence[str] | None = None) -> list[Row]:
        return self._send(sql, args, tables=tables).fetchall()

    def _one(self, sql: str, args: Sequence[Any] = (), *,
             tables: Sequence[str] | None = None) -> Row | None:
        return self._send(sql, args, tables=tables).fetchone()

    def _count(self, sql: str, args: Sequence[Any] = (), *,
               tables: Sequence[str] | None = None) -> int:
        """Rows affected by a statement (waits for its answer)."""
        cur = self._send(sql, args, tables=tables)
        if self.p is not None:
            self.p.sync()
        return cur.rowcount

    def _affects_one(self, sql: str, args: Sequence[Any], what: str, *,
                     tables: Sequence[str] | None = None) -> bool:
        """A compare-and-set that changes one row when it succeeds: guessed True when
        optimistic (checked in `finish()`), else waited for."""
        if not self.optimistic:
            return self._count(sql, args, tables=tables) == 1
        self._checks.append((self._send(sql, args, tables=tables), _one_row, what))
        return True

    def _buffer(self, kind: str, row: Row) -> None:
        self._buffers.setdefault(kind, []).append(row)

    def _then(self, sql: str, args: Sequence[Any], then: Callable[[list[Row]], None]) -> None:
        """Run `then` on the statement's rows: now, or (optimistic) in `finish()`."""
        cur = self._send(sql, args)
        if self.optimistic:
            self._after.append((cur, then))
        else:
            then(cur.fetchall())

    def lock(self, *keys: str) -> None:
        """Serialize read-modify-writes of these keys across transactions (held to commit).
        Keys are locked in sorted order, so two transactions locking the same set cannot
        deadlock on them."""
        fresh = sorted(set(keys) - self._locked)
        if not fresh or not self.writable:
            return
        self._locked.update(fresh)
        self._send("SELECT pg_advisory_xact_lock(hashtextextended('stepwell:' || k, 0)) "
                   "FROM unnest(%s::text[]) WITH ORDINALITY AS u(k, n) ORDER BY n", (fresh,),
                   tables=())

    # --- buffers and checks ------------------------------------------------------------------
    def flush(self, tables: Sequence[str] | None = None) -> None:
        """Send the buffered writes (to `tables`, or all), one statement per kind."""
        for kind in KINDS:
            rows = self._buffers.get(kind.name)
            if not rows or (tables is not None and kind.table not in tables):
                continue
            del self._buffers[kind.name]
            columns = [list(column) for column in zip(*rows, strict=True)]
            cur = self.c.execute(kind.sql, columns)
            if kind.check or kind.wake:
                self._bulk_results.append((cur, kind, {row[:kind.keys] for row in rows}))

    def finish(self) -> str | None:
        """Before COMMIT: flush, wait for every answer, check the guesses (`Misprediction` if
        one was wrong), run what was deferred on answers. Returns the transaction's id (None if
        it wrote nothing), which the writer needs if COMMIT is interrupted."""
        self.flush()
        waited = None
        if self._quiet_names:
            waited = self.c.execute("SELECT DISTINCT event_name FROM waits "
                                    "WHERE event_name = ANY(%s)", (sorted(self._quiet_names),))
        xid = self.c.execute("SELECT pg_current_xact_id_if_assigned()::text")
        assert self.p is not None, "only pipelined (writer) transactions are finished"
        self.p.sync()
        if waited is not None and (found := waited.fetchall()):
            raise Misprediction(f"waits:{found[0][0]}")
        for cur, check, what in self._checks:
            if not check(cur):
                raise Misprediction(what)
        freed: list[Row] = []
        for cur, kind, expected in self._bulk_results:
            rows = cur.fetchall()
            if kind.check and not expected <= {row[:kind.keys] for row in rows}:
                raise Misprediction(kind.name)
            if kind.wake:
                freed += [row[kind.keys:] for row in rows]
        for cur, then in self._after:
            then(cur.fetchall())
        if freed:
            self._wake(freed)
        row = xid.fetchone()
        return None if row is None else row[0]

    def _wake(self, rows: list[Row]) -> None:
        raise NotImplementedError


def _one_row(cur: Cursor) -> bool:
    return cur.rowcount == 1
