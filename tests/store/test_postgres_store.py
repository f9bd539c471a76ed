"""The Postgres store against the real server: start-up errors, migrations, the read-modify-writes
that must stay correct with many processes writing at once, guessed answers and their fallback,
and commits interrupted by a lost connection.

Several transactions "from several processes" are separate connections here; where an interleaving
matters, the test forces it (one transaction holds, another is shown to wait for it).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from typing import Any

import psycopg
import pytest

from stepwell.core.models import Memo
from stepwell.core.urls import redact
from stepwell.runtime import admission
from stepwell.runtime.scripts import LeaseLost, hold
from stepwell.store.base import RunRow, StoreError, WaitRow, migration_files
from stepwell.store.postgres import SCHEMA_VERSION, PostgresStore, migrate
from stepwell.store.postgres_conn import PostgresWriter
from stepwell.store.postgres_tx import PostgresTx, WriterState

Script = Callable[[PostgresTx], Any]


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


@contextmanager
def transaction(conn: psycopg.Connection[Any], *, optimistic: bool = False
                ) -> Iterator[PostgresTx]:
    """An open write transaction (committed on exit) over `conn`, as a writer runs one."""
    with conn.pipeline() as pipeline:
        conn.execute("BEGIN")
        tx = PostgresTx(conn, pipeline, writable=True, optimistic=optimistic, state=WriterState())
        yield tx
        tx.finish()
        conn.execute("COMMIT")


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run `fn` on a thread; its result (or exception) lands in the returned list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def wait_until_blocked(url: str, backend_pid: int, deadline_s: float = 30.0) -> None:
    """Until the backend `backend_pid` waits for a lock (seen in pg_stat_activity, from a
    connection of its own in autocommit, so each look is fresh): the proof that a second
    transaction waits for the first, whatever the machine's speed."""
    deadline = time.monotonic() + deadline_s
    with closing(psycopg.connect(url, autocommit=True)) as observer:
        while True:
            row = observer.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                (backend_pid,)).fetchone()
            if row is not None and row[0] == "Lock":
                return
            assert time.monotonic() < deadline, f"backend {backend_pid} never waited for a lock"
            time.sleep(0.01)


def run_writer(url: str, scripts: list[Script], **options: Any) -> list[Any]:
    """One group through a real writer; each script's value or exception, as group commit
    resolves them (a failing script is isolated by re-running the others alone)."""
    writer = PostgresWriter(url, fsync=True, outage_seconds=10, state=WriterState(), **options)
    try:
        try:
            return writer.run(scripts)
        except Exception:
            results: list[Any] = []
            for script in scripts:
                try:
                    results.append(writer.run([script])[0])
                except Exception as exc:
                    results.append(exc)
            return results
    finally:
        writer.close()


def seed_runs(url: str, count: int, *, owner: str | None = "w", concurrency: Any = ()
              ) -> list[int]:
    """`count` runs with an exec item each (leased to `owner`); the item ids."""
    ids = []
    with closing(connect(url)) as conn, transaction(conn) as tx:
        for i in range(count):
            tx.insert_run(RunRow(f"run{i}", "app/fn", [f"ev{i}"], i))
            item = tx.enqueue("exec", f"exec:run{i}", i, run_id=f"run{i}", owner=owner,
                              lease_until=10**13 if owner else None, concurrency=concurrency)
            ids.append(item)
    if owner is None:
        with closing(connect(url)) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM queue ORDER BY id")]
    return ids


# --- start-up ------------------------------------------------------------------------------


@pytest.mark.parametrize("url, reason", [
    ("postgresql://postgres:s3cret@127.0.0.1:1/stepwell", "Connection refused"),
    ("postgresql://postgres:s3cret@127.0.0.1:5432/no_such_db_here", "does not exist"),
    ("postgresql://nobody_here:s3cret@127.0.0.1:5432/postgres", "does not exist"),
    ("postgresql://postgres@no-such-host.invalid:5432/x", "failed to resolve host"),
    ("postgresql://postgres@127.0.0.1:5432/x?bogus_option=1", "bogus_option"),
])
async def test_a_bad_url_is_one_clear_error_without_the_password(url: str, reason: str) -> None:
    store = PostgresStore(url)
    started = time.monotonic()
    with pytest.raises(StoreError) as failed:
        await store.open()
    message = str(failed.value)
    assert message.startswith(f"cannot connect to Postgres at {redact(url)}: "), message
    assert reason in message
    assert "s3cret" not in message and "\n" not in message
    assert time.monotonic() - started < 15


async def test_a_database_from_a_newer_stepwell_is_refused(pg_database: str) -> None:
    with closing(connect(pg_database)) as conn:
        conn.execute("UPDATE stepwell_meta SET value = '99' WHERE key = 'schema_version'")
    store = PostgresStore(pg_database)
    with pytest.raises(StoreError, match="schema version 99, written by a newer stepwell"):
        await store.open()


def test_processes_starting_together_migrate_once(pg_database: str) -> None:
    """Eight connections run the migrations at the same instant on an empty database."""
    with closing(connect(pg_database)) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    barrier = threading.Barrier(8)

    def start() -> int:
        with closing(connect(pg_database)) as conn:
            barrier.wait()
            return migrate(conn)

    threads = [in_thread(start) for _ in range(8)]
    for thread, _ in threads:
        thread.join(30)
    found = sorted(out[0] for _, out in threads)
    assert found == [0] + [SCHEMA_VERSION] * 7, found     # one migrated, seven saw it done
    with closing(connect(pg_database)) as conn:
        version = conn.execute("SELECT value FROM stepwell_meta").fetchall()
        assert version == [(str(SCHEMA_VERSION),)]


def test_an_older_schema_is_upgraded(pg_database: str) -> None:
    with closing(connect(pg_database)) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        conn.execute(migration_files("postgres")[0][1].encode())
        conn.execute("CREATE TABLE stepwell_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO stepwell_meta VALUES ('schema_version', '1')")
        conn.execute("INSERT INTO queue (unique_key, kind, due_at) VALUES ('exec:old', 'exec', 5)")
        assert migrate(conn) == 1
        assert conn.execute("SELECT priority_at, blocked FROM queue").fetchall() == [(5, False)]


# --- read-modify-writes across processes ------------------------------------------------------


def test_concurrency_slots_are_counted_across_processes(pg_database: str) -> None:
    """Two claimers of one key (limit 1): the second waits for the first to commit, then sees its
    claim and parks its own item, so the limit holds across processes."""
    seed_runs(pg_database, 2, owner=None, concurrency=[("c:fn:k", 1)])
    with closing(connect(pg_database)) as c1, closing(connect(pg_database)) as c2:
        with transaction(c1) as tx1:
            first = admission.claim(tx1, 100, "w1", 10**13, 1)
            assert len(first) == 1

            def second() -> list[Any]:
                with transaction(c2) as tx2:
                    return admission.claim(tx2, 100, "w2", 10**13, 1)

            thread, out = in_thread(second)
            wait_until_blocked(pg_database, c2.info.backend_pid)
            assert thread.is_alive(), "the second claimer did not wait for the first"
        thread.join(10)
        assert out == [[]], out           # its item was parked: the key is full
        held = c1.execute("SELECT owner, blocked FROM queue ORDER BY id").fetchall()
        assert held == [("w1", False), (None, True)]


def test_a_limited_run_leased_at_creation_is_counted_by_a_concurrent_claimer(
        pg_database: str) -> None:
    """The fast path of a new limited run (limit 1) and a claimer of the same key in another
    process: the claimer waits for the creating transaction, then counts its leased item and
    parks its own, so the limit holds."""
    seed_runs(pg_database, 1, owner=None, concurrency=[("c:fn:k", 1)])
    with closing(connect(pg_database)) as c1, closing(connect(pg_database)) as c2:
        c1.execute("UPDATE queue SET due_at = 200")          # not due for the fast path's now
        with transaction(c1) as tx1:
            assert tx1.slots_free_now([("c:fn:k", 1)], 100)
            tx1.enqueue("exec", "exec:new", 100, run_id="new", owner="w1",
                        lease_until=10**13, concurrency=[("c:fn:k", 1)])

            def second() -> list[Any]:
                with transaction(c2) as tx2:
                    return admission.claim(tx2, 300, "w2", 10**13, 1)

            thread, out = in_thread(second)
            wait_until_blocked(pg_database, c2.info.backend_pid)
            assert thread.is_alive(), "the claimer did not wait for the fast path's commit"
        thread.join(10)
        assert out == [[]], out
        rows = c1.execute("SELECT unique_key, owner, blocked FROM queue ORDER BY id").fetchall()
        assert rows == [("exec:run0", None, True), ("exec:new", "w1", False)]


def test_the_fast_path_does_not_wait_for_a_key_another_transaction_decides_on(
        pg_database: str) -> None:
    """While a claimer holds a key's lock (deciding on its slots), a new run on that key does
    not wait for it (that wait could deadlock): it answers "no slot now", and queues."""
    seed_runs(pg_database, 1, owner=None, concurrency=[("c:fn:k", 5)])
    with closing(connect(pg_database)) as c1, closing(connect(pg_database)) as c2:
        with transaction(c1) as tx1:
            assert len(admission.claim(tx1, 100, "w1", 10**13, 1)) == 1
            with transaction(c2) as tx2:           # would hang here if it waited for tx1
                assert not tx2.slots_free_now([("c:fn:k", 5)], 100)
                assert tx2.slots_free_now([("c:fn:other", 5)], 100)
        with transaction(c2) as tx2:
            assert tx2.slots_free_now([("c:fn:k", 5)], 100)   # committed: 1 of 5 held


def test_flow_state_updates_are_serialized(pg_database: str) -> None:
    """GCRA state: read, decide, write. A second transaction waits, then reads the first's
    write (no lost update)."""
    with closing(connect(pg_database)) as c1, closing(connect(pg_database)) as c2:
        with transaction(c1) as tx1:
            assert tx1.get_flow("throttle:fn:k") is None

            def second() -> Any:
                with transaction(c2) as tx2:
                    state = tx2.get_flow("throttle:fn:k")
                    tx2.put_flow("throttle:fn:k", text=str(int(state[0]) + 1))
                    return state

            thread, out = in_thread(second)
            wait_until_blocked(pg_database, c2.info.backend_pid)
            assert thread.is_alive(), "the second transaction did not wait for the lock"
            tx1.put_flow("throttle:fn:k", text="1")
        thread.join(10)
        assert out == [("1", None)]
        assert c1.execute("SELECT text FROM flow_state").fetchall() == [("2",)]


@pytest.mark.parametrize("optimistic", [False, True], ids=["strict", "guessing"])
def test_a_step_result_is_committed_once(pg_database: str, optimistic: bool) -> None:
    """Two holders race to commit the same step (a stale lease): exactly one insert wins."""
    seed_runs(pg_database, 1)
    memo = Memo("h", "s", "run", 0, data=1)
    results = []
    for _ in range(2):
        results += run_writer(pg_database, [lambda tx: tx.insert_memo("run0", memo)],
                              guess=optimistic)
    assert results == [True, False]
    with closing(connect(pg_database)) as conn:
        assert conn.execute("SELECT count(*) FROM memos").fetchone() == (1,)


def test_run_status_is_compare_and_set(pg_database: str) -> None:
    seed_runs(pg_database, 1)
    with closing(connect(pg_database)) as c1, closing(connect(pg_database)) as c2:
        with transaction(c1) as tx1:
            assert tx1.finish_run("run0", "completed", 5, output=1)

            def second() -> bool:
                with transaction(c2) as tx2:
                    return tx2.finish_run("run0", "cancelled", 6)

            thread, out = in_thread(second)
            wait_until_blocked(pg_database, c2.info.backend_pid)
        thread.join(10)
        assert out == [False]
        assert c1.execute("SELECT status, output FROM runs").fetchall() == [("completed", "1")]


def test_a_deadlock_victim_is_retried(pg_database: str) -> None:
    """Two writers lock two runs in opposite orders: Postgres aborts one as a deadlock victim,
    whose writer runs the group again; both groups commit."""
    seed_runs(pg_database, 2)
    first_attempt = [threading.Event(), threading.Event()]

    def crossing(me: int) -> Script:
        def script(tx: PostgresTx) -> bool:
            tx.add_run_warning(f"run{me}", f"from {me}")          # SELECT ... FOR UPDATE
            if not first_attempt[me].is_set():
                first_attempt[me].set()
                first_attempt[1 - me].wait(5)
            tx.add_run_warning(f"run{1 - me}", f"from {me}")
            return True
        return script

    threads = [in_thread(lambda me=me: run_writer(pg_database, [crossing(me)], guess=False))
               for me in (0, 1)]
    for thread, _ in threads:
        thread.join(30)
    assert [out for _, out in threads] == [[[True]], [[True]]]
    with closing(connect(pg_database)) as conn:
        warnings = conn.execute("SELECT warnings FROM runs ORDER BY id").fetchall()
    assert [sorted(json.loads(w)) for (w,) in warnings] == [["from 0", "from 1"]] * 2


# --- guessed answers ----------------------------------------------------------------------------


def test_a_wrong_guess_reruns_the_group_and_only_the_failing_script_fails(
        pg_database: str) -> None:
    """A group of checkpoints where one lease was lost meanwhile: the guesses are rolled back,
    the group re-runs waiting for answers, the stale script gets LeaseLost, the others commit."""
    items = seed_runs(pg_database, 3)
    with closing(connect(pg_database)) as conn:
        conn.execute("UPDATE queue SET owner = 'someone-else' WHERE id = %s", (items[1],))

    def checkpoint(i: int) -> Script:
        def script(tx: PostgresTx) -> bool:
            hold(tx, items[i], "w", 10**13)
            return tx.insert_memo(f"run{i}", Memo("h", "s", "run", 0, data=i))
        return script

    writer = PostgresWriter(pg_database, fsync=True, outage_seconds=10, state=WriterState())
    try:
        with pytest.raises(LeaseLost):
            writer.run([checkpoint(i) for i in range(3)])
        assert writer.mispredictions == 1
        assert [writer.run([checkpoint(i)])[0] for i in (0, 2)] == [True, True]
    finally:
        writer.close()
    with closing(connect(pg_database)) as conn:
        memos = conn.execute("SELECT run_id FROM memos ORDER BY run_id").fetchall()
    assert memos == [("run0",), ("run2",)]


def test_a_quiet_event_name_still_finds_a_new_wait(pg_database: str) -> None:
    """After a few events of a name matched no wait, "no waits" is guessed for it; when another
    process has registered one meanwhile, the guess is caught and the wait found."""
    state = WriterState()
    writer = PostgresWriter(pg_database, fsync=True, outage_seconds=10, state=state)
    try:
        for _ in range(WriterState.QUIET_AFTER):
            assert writer.run([lambda tx: tx.find_waits("order/paid", [])]) == [[]]
        assert state.quiet("order/paid")
        assert writer.run([lambda tx: tx.find_waits("order/paid", [])]) == [[]]   # guessed
        with closing(connect(pg_database)) as conn, transaction(conn) as tx:
            tx.insert_wait(WaitRow("run0", "wait", "order/paid", None, "h"))
        found = writer.run([lambda tx: tx.find_waits("order/paid", [])])[0]
        assert [w.run_id for w in found] == ["run0"]
        assert writer.mispredictions == 1 and not state.quiet("order/paid")
    finally:
        writer.close()


def test_buffered_writes_are_visible_to_later_reads(pg_database: str) -> None:
    """Within one guessing transaction a read sees the writes buffered before it."""
    seed_runs(pg_database, 1)

    def script(tx: PostgresTx) -> Any:
        tx.insert_run(RunRow("new", "app/fn", ["e"], 7))
        tx.insert_memo("new", Memo("h", "s", "run", 0, data="x"))
        tx.finish_run("run0", "completed", 9, output=3)
        state = tx.load_run_state("new")
        return state.memos["h"].data, tx.get_run("run0").status

    assert run_writer(pg_database, [script]) == [("x", "completed")]


async def test_a_read_of_several_statements_sees_one_snapshot(pg_database: str) -> None:
    """Reads of one statement run alone; a script that needs more runs in a REPEATABLE READ
    transaction: a commit landing between its statements is not seen by the later ones."""
    seed_runs(pg_database, 1)
    store = PostgresStore(pg_database)
    await store.open()
    try:
        def script(tx: PostgresTx) -> tuple[Any, Any]:
            before = tx.get_run("run0")
            with closing(connect(pg_database)) as conn:       # another process, meanwhile
                conn.execute("UPDATE runs SET status = 'completed' WHERE id = 'run0'")
            return before.status, tx.get_run("run0").status

        first = await store.read(script)
        # The first attempt (one statement allowed) is abandoned at the second statement and
        # the whole script runs again in a transaction, after the update of that attempt.
        assert first == ("completed", "completed")
        with closing(connect(pg_database)) as conn:
            conn.execute("UPDATE runs SET status = 'queued' WHERE id = 'run0'")
        calls = []

        def counted(tx: PostgresTx) -> tuple[Any, Any]:
            calls.append(1)
            before = tx.get_run("run0")
            if len(calls) == 2:                                # inside the transaction
                with closing(connect(pg_database)) as conn:
                    conn.execute("UPDATE runs SET status = 'failed' WHERE id = 'run0'")
            return before.status, tx.get_run("run0").status

        assert await store.read(counted) == ("queued", "queued")   # one snapshot
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            await store.read(lambda tx: tx.delete_step_wait("x", "y"))
    finally:
        await store.close()


# --- lost connections --------------------------------------------------------------------------


def cut(conn: Any) -> None:
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        sock.shutdown(socket.SHUT_RDWR)


class LosesReplyToCommit(PostgresWriter):
    """Sends COMMIT, lets the server commit, then loses the connection before reading the
    answer (the first time): the group's fate is unknown to the writer, which must ask."""

    cuts = 1

    def _commit(self, conn: Any) -> None:
        conn.execute("COMMIT")
        if self.cuts:
            self.cuts -= 1
            conn.pgconn.flush()
            time.sleep(0.3)
            cut(conn)


class LosesConnectionBeforeCommit(PostgresWriter):
    cuts = 1

    def _commit(self, conn: Any) -> None:
        if self.cuts:
            self.cuts -= 1
            cut(conn)
        conn.execute("COMMIT")


@pytest.mark.parametrize("writer_class", [LosesReplyToCommit, LosesConnectionBeforeCommit])
def test_a_commit_cut_off_by_a_lost_connection_is_neither_lost_nor_repeated(
        pg_database: str, writer_class: type[PostgresWriter]) -> None:
    seed_runs(pg_database, 1)
    calls = []

    def script(tx: PostgresTx) -> bool:
        calls.append(1)
        return tx.insert_memo("run0", Memo("h", "s", "run", 0, data=1))

    writer = writer_class(pg_database, fsync=True, outage_seconds=10, state=WriterState())
    try:
        assert writer.run([script]) == [True]
    finally:
        writer.close()
    # Committed by the first attempt: not run again. Not committed: run again, and committed.
    assert len(calls) == (1 if writer_class is LosesReplyToCommit else 2)
    with closing(connect(pg_database)) as conn:
        assert conn.execute("SELECT count(*) FROM memos").fetchone() == (1,)


async def test_reads_and_writes_ride_out_killed_connections(pg_database: str) -> None:
    """Every backend of the store is terminated a few times while it works: each operation is
    retried on a new connection and none fails."""
    store = PostgresStore(pg_database, outage_seconds=20)
    await store.open()
    seed_runs(pg_database, 1)
    dbname = pg_database.rpartition("/")[2]
    stop = threading.Event()

    kills = []

    def killer() -> None:
        with closing(connect(pg_database)) as conn:
            while not stop.wait(0.25):
                kills.append(1)
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = %s AND pid <> pg_backend_pid() "
                             "AND application_name = 'stepwell'", (dbname,))

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        for n in range(60):
            memo = Memo(f"h{n}", "s", "run", n, data=n)
            assert await store.write(lambda tx, memo=memo: tx.insert_memo("run0", memo))
            state = await store.read(lambda tx: tx.load_run_state("run0"))
            assert len(state.memos) == n + 1
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        thread.join()
        await store.close()
    assert len(kills) >= 3, "the store was too fast for the killer: nothing was tested"
