"""FIFO per concurrency key across concurrent transactions on Postgres: a claim that chose a
new item while another transaction was freeing the key's slot and waking the oldest parked
item yields the slot to the woken item (`SlotsTx.yield_to_woken`).

The interleaving is forced, not hoped for: the waking transaction holds the key's lock until
the claim is seen waiting for it (pg_stat_activity), then commits. (SQLite has one writer at
a time, so the race cannot happen there.)"""

from __future__ import annotations

import threading
import time
from contextlib import closing
from typing import Any

import psycopg

from stepwell.store.base import QueueItem
from stepwell.store.postgres_tx import PostgresTx, WriterState

NOW = 1_000


def _items(conn: psycopg.Connection[Any]) -> dict[str, tuple[Any, ...]]:
    rows = conn.execute("SELECT unique_key, owner, blocked FROM queue ORDER BY id").fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


def test_a_claim_yields_the_freed_slot_to_the_item_woken_meanwhile(pg_database: str) -> None:
    with closing(psycopg.connect(pg_database, autocommit=True)) as setup:
        setup.execute(
            "INSERT INTO queue (unique_key, kind, run_id, due_at, priority_at, owner, "
            "lease_until, ck1, cl1, blocked) VALUES "
            "('holder', 'exec', 'r1', 100, 100, 'w1', 10000, 'k', 1, false), "
            "('parked', 'exec', 'r2', 200, 200, NULL, NULL, 'k', 1, true), "
            "('newer', 'exec', 'r3', 300, 300, NULL, NULL, 'k', 1, false), "
            "('other key', 'exec', 'r4', 400, 400, NULL, NULL, 'j', 1, false)")

    claimed: list[QueueItem] = []
    errors: list[BaseException] = []
    claimer_pid: list[int] = []

    def claim() -> None:
        try:
            with closing(psycopg.connect(pg_database, autocommit=True)) as conn:
                claimer_pid.append(conn.info.backend_pid)
                with conn.pipeline() as pipeline:
                    conn.execute("BEGIN")
                    tx = PostgresTx(conn, pipeline, writable=True, state=WriterState())
                    claimed.extend(tx.claim_due(NOW, "w2", 10_000, 10))
                    tx.finish()
                conn.execute("COMMIT")
        except BaseException as exc:    # reported by the test below
            errors.append(exc)

    with closing(psycopg.connect(pg_database, autocommit=True)) as waker:
        # The slot frees: the holder's release and the wake-up of the parked item, under the
        # key's lock, not yet committed.
        waker.execute("BEGIN")
        waker.execute("SELECT pg_advisory_xact_lock(hashtextextended('stepwell:c:k', 0))")
        waker.execute("DELETE FROM queue WHERE unique_key = 'holder'")
        waker.execute("UPDATE queue SET blocked = false WHERE unique_key = 'parked'")
        thread = threading.Thread(target=claim)
        thread.start()
        deadline = time.monotonic() + 30
        while True:     # until the claim (it chose 'newer': 'parked' was blocked) waits for k
            waiting = claimer_pid and waker.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
                (claimer_pid[0],)).fetchone()
            if waiting or errors or not thread.is_alive():
                break
            assert time.monotonic() < deadline, "the claim never waited for the key's lock"
            time.sleep(0.01)
        waker.execute("COMMIT")
        thread.join(30)
        assert not thread.is_alive()
        assert not errors, errors
        items = _items(waker)

    # The newer item was parked again behind the woken one; the other key's item was kept.
    assert [item.unique_key for item in claimed] == ["other key"]
    assert items["newer"] == (None, True)
    assert items["parked"] == (None, False)
    assert items["other key"] == ("w2", False)
