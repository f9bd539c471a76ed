"""The queue rules' SQL agrees with their one definition (store/queue_rules.py), on every backend.

Every starting state of an item that `enqueue` and `release_item` decide on (leased or free,
blocked, holding concurrency keys, flagged to run again, a timer) is written with plain SQL,
the operation runs through the storage interface, and the columns it left are compared with
`merge_enqueue` / `rearm`, the rules in Python. On Postgres the guessing writer releases through
its bulk statement and the strict one through the single-row statement: both are checked.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from stepwell.store.base import Store, Tx
from stepwell.store.queue_rules import Slot, merge_enqueue, rearm

pytestmark = pytest.mark.postgres_strict

NOW = 1_000_000
COLUMNS = "due_at, priority_at, owner, lease_until, rerun, timer, blocked, ck1, kind"


@contextmanager
def raw(db_url: str) -> Iterator[tuple[Any, str]]:
    """A plain connection to the test database, and its parameter mark."""
    if db_url.startswith("sqlite:///"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        try:
            yield conn, "?"
            conn.commit()
        finally:
            conn.close()
    else:
        with psycopg.connect(db_url, autocommit=True) as pg:
            yield pg, "%s"


def put(db_url: str, items: dict[str, Slot]) -> None:
    with raw(db_url) as (conn, mark):
        for key, slot in items.items():
            conn.execute(
                "INSERT INTO queue (unique_key, kind, run_id, due_at, priority_at, owner, "
                f"lease_until, rerun, timer, blocked, ck1, cl1) VALUES ({', '.join([mark] * 12)})",
                (key, slot.kind, None, slot.due_at, slot.priority_at, slot.owner,
                 slot.lease_until, slot.rerun, slot.timer, slot.blocked,
                 "c:fn:k" if slot.keyed else None, 1 if slot.keyed else None))


def get(db_url: str, keys: Sequence[str]) -> dict[str, Slot]:
    with raw(db_url) as (conn, mark):
        out = {}
        for key in keys:
            row = conn.execute(f"SELECT {COLUMNS} FROM queue WHERE unique_key = {mark}",
                               (key,)).fetchone()
            out[key] = Slot(row[0], row[1], row[2], row[3], bool(row[4]), bool(row[5]),
                            bool(row[6]), row[7] is not None, row[8])
        return out


def starting_states() -> Iterator[Slot]:
    for leased, blocked, keyed, rerun, timer in itertools.product((False, True), repeat=5):
        if leased and blocked:      # a blocked item is never leased (block_item unleases it)
            continue
        yield Slot(NOW, NOW - 7, "other" if leased else None, NOW + 99 if leased else None,
                   rerun=rerun, timer=timer, blocked=blocked, keyed=keyed)


async def test_enqueue_on_an_existing_key_follows_merge_enqueue(db_url: str,
                                                                store: Store) -> None:
    calls = [(f"k{n}", old, due, owner)
             for n, (old, due, owner) in enumerate(itertools.product(
                 starting_states(), (NOW - 50, NOW + 50), (None, "me")))]
    put(db_url, {key: old for key, old, _, _ in calls})

    def script(tx: Tx) -> list[int | None]:
        return [tx.enqueue("exec", key, due, owner=owner,
                           lease_until=NOW + 500 if owner else None, priority_at=due)
                for key, _, due, owner in calls]

    leased = await store.write(script)
    after = get(db_url, [key for key, _, _, _ in calls])
    for (key, old, due, owner), got_lease in zip(calls, leased, strict=True):
        expected = merge_enqueue(old, due, due, owner, NOW + 500 if owner else None)
        assert after[key] == expected, (key, old, due, owner)
        # Leased by this call: only an item nobody held (one held, even by the caller's own
        # process, is flagged to run again instead of being handed out twice).
        assert (got_lease is not None) == (
            owner is not None and old.owner is None and expected.owner == owner), key


async def test_release_for_later_follows_rearm(db_url: str, store: Store) -> None:
    calls = [(f"r{n}", Slot(NOW, NOW, "me", NOW + 99, rerun=rerun, keyed=keyed, kind=kind),
              due, timer)
             for n, (rerun, keyed, kind, due, timer) in enumerate(itertools.product(
                 (False, True), (False, True), ("exec", "cron"), (NOW - 20, NOW + 20),
                 (False, True)))]
    put(db_url, {key: old for key, old, _, _ in calls})
    ids = await store.read(lambda tx: {key: tx.get_item(key) for key, _, _, _ in calls})

    def script(tx: Tx) -> list[bool]:
        out = []
        for key, _, due, timer in calls:
            item = ids[key]
            assert item is not None
            out.append(tx.release_item(item.id, "me", due, NOW, timer=timer))
        return out

    assert all(await store.write(script))
    after = get(db_url, [key for key, _, _, _ in calls])
    for key, old, due, timer in calls:
        assert after[key] == rearm(old, due, NOW, timer), (key, old, due, timer)
