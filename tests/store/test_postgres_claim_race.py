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

from stepwell.store.base import ClaimVersions, QueueItem
from stepwell.store.postgres_tx import PostgresTx, WriterState

NOW = 1_000


def _items(conn: psycopg.Connection[Any]) -> dict[str, tuple[Any, ...]]:
    rows = conn.execute("SELECT unique_key, owner, blocked FROM queue ORDER BY id").fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


def race(url: str, limit: int, versions: ClaimVersions | None = None
         ) -> tuple[list[str], dict[str, tuple[Any, ...]]]:
    """Key k (`limit` slots) held by 'holder', 'parked' blocked on it, 'newer' ready on it,
    'other key' ready on key j. A waker frees k's slot and wakes 'parked' under k's lock
    while a claim (`versions`: its filter) that chose 'newer' and 'other key' waits for that
    lock. What the claim returned and the items after."""
    with closing(psycopg.connect(url, autocommit=True)) as setup:
        setup.execute(
            "INSERT INTO runs (id, function_id, status, created_at, version) VALUES "
            "('r2', 'app/fn', 'running', 1, 'v1'), ('r3', 'app/fn', 'running', 2, 'v2'), "
            "('r4', 'app/fn', 'running', 3, 'v2')")
        setup.execute(
            "INSERT INTO queue (unique_key, kind, run_id, due_at, priority_at, owner, "
            "lease_until, ck1, cl1, blocked) VALUES "
            "('holder', 'exec', 'r1', 100, 100, 'w1', 10000, 'k', %(n)s, false), "
            "('parked', 'exec', 'r2', 200, 200, NULL, NULL, 'k', %(n)s, true), "
            "('newer', 'exec', 'r3', 300, 300, NULL, NULL, 'k', %(n)s, false), "
            "('other key', 'exec', 'r4', 400, 400, NULL, NULL, 'j', 1, false)", {"n": limit})

    claimed: list[QueueItem] = []
    errors: list[BaseException] = []
    claimer_pid: list[int] = []

    def claim() -> None:
        try:
            with closing(psycopg.connect(url, autocommit=True)) as conn:
                claimer_pid.append(conn.info.backend_pid)
                with conn.pipeline() as pipeline:
                    conn.execute("BEGIN")
                    tx = PostgresTx(conn, pipeline, writable=True, state=WriterState())
                    claimed.extend(tx.claim_due(NOW, "w2", 10_000, 10, versions=versions))
                    tx.finish()
                conn.execute("COMMIT")
        except BaseException as exc:    # reported by the caller
            errors.append(exc)

    with closing(psycopg.connect(url, autocommit=True)) as waker:
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
        return [item.unique_key for item in claimed], _items(waker)


def test_a_claim_yields_the_freed_slot_to_the_item_woken_meanwhile(pg_database: str) -> None:
    claimed, items = race(pg_database, limit=1)
    assert claimed == ["other key"]             # 'newer' was parked again behind 'parked'
    assert items["newer"] == (None, True)
    assert items["parked"] == (None, False)     # woken: the next claim takes it
    assert items["other key"] == ("w2", False)


def test_a_claim_does_not_yield_a_slot_the_key_has_to_spare(pg_database: str) -> None:
    claimed, items = race(pg_database, limit=2)
    assert claimed == ["newer", "other key"]    # a slot for 'parked' and one for 'newer'
    assert items["newer"] == ("w2", False)
    assert items["parked"] == (None, False)


def test_a_versioned_claim_does_not_yield_to_an_item_it_may_not_claim(pg_database: str
                                                                      ) -> None:
    """'parked' is a run of version v1; a v2 worker never claims it, so waiting behind it
    would leave the key idle until a v1 worker comes back."""
    claimed, items = race(pg_database, limit=1,
                          versions=ClaimVersions(own=(("app/fn", "v2"),)))
    assert claimed == ["newer", "other key"]
    assert items["newer"] == ("w2", False)
