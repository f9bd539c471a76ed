"""`Tx` for Postgres, the concurrency slots' decisions apart from the queue's main statements
(postgres_tx; documented in store/base.py): the fast path of a concurrency-limited run
(`slots_free_now`), whether a new run may be leased in the transaction that creates it; the
held count a claim decides on (`count_held`), parking and waking items (`block_item`,
`_wake`, `unblock_all`); and a claim yielding to an item a concurrent wake-up let go ahead
of it (`yield_to_woken`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from stepwell.store.base import QueueItem
from stepwell.store.postgres_sql import Pipe, Row
from stepwell.store.queue_rules import WAKE_ORDER, claim_key, held_sql

# Without waiting: true if every lock was free (or is held by this transaction already).
_TRY_LOCKS = ("SELECT bool_and(pg_try_advisory_xact_lock(hashtextextended('stepwell:' || k, 0))) "
              "FROM unnest(%s::text[]) AS u(k)")
# Per key: held slots, and whether an unleased item on it is due (`queue_held_*`,
# `queue_waiting_*`: one probe each).
_SLOT_STATE = (
    f"SELECT k, {held_sql('k')}, "
    "EXISTS (SELECT 1 FROM queue WHERE owner IS NULL AND ck1 = k AND due_at <= %s) OR "
    "EXISTS (SELECT 1 FROM queue WHERE owner IS NULL AND ck2 = k AND due_at <= %s) "
    "FROM unnest(%s::text[]) AS u(k)")


# Per claimed item and key (id, key, claim priority): the unleased, unblocked items due by now
# on the key ahead of it in claim order (`queue_order`: only such items, in that order, so the
# walk stops at the claimed item's place; `{where}`: a versioned worker's filter, so items it
# may not claim do not count), and the key's leased items (this claim's included).
_AHEAD = (
    "SELECT c.id, c.k, (SELECT count(*) FROM queue WHERE owner IS NULL AND NOT blocked "
    "AND due_at <= %s AND (priority_at, id) < (c.p, c.id) AND (ck1 = c.k OR ck2 = c.k){where}), "
    f"{held_sql('c.k')} "
    "FROM unnest(%s::bigint[], %s::text[], %s::bigint[]) AS c(id, k, p)")


class SlotsTx(Pipe):
    def yield_to_woken(self, items: list[QueueItem], owner: str, now: int,
                       versions: tuple[str, tuple[Any, ...]]) -> list[QueueItem]:
        """The claimed `items` less those that must leave a slot to older items a wake-up let
        go while this claim was choosing (parked again, blocked, and left out).

        A claim picks its items, then waits for the locks of their keys. A transaction that
        freed a slot of such a key meanwhile held the lock and unblocked the oldest item
        parked on it; that item was not a candidate (blocked when the claim chose). Without
        this, the claim would take the freed slot for a newer item, and the woken one would
        park again behind it: FIFO per key broken (a new run overtaking runs waiting for its
        key). So a claimed item is kept only if the key's slots cover everything ahead of it:
        the leased items of others, the older items still waiting (unleased, unblocked, due,
        claimable by this worker: `versions` is its claim filter) and the items this claim
        kept before it. Those ahead get the slots (the next claim takes them); a slot they
        free wakes the oldest parked item again. Called with the keys locked. An item counted
        ahead that no one claims after all (its run was cancelled while it waited) leaves the
        parked ones to the maintenance pass's `unblock_all`."""
        limited = [item for item in items if item.concurrency]
        if not limited:
            return items
        where, args = versions
        pairs = [(item, key) for item in limited for key, _ in item.concurrency]
        found = {(int(row[0]), row[1]): (int(row[2]), int(row[3])) for row in self._rows(
            _AHEAD.format(where=where),
            (now, *args, [item.id for item, _ in pairs], [key for _, key in pairs],
             [claim_key(item)[0] for item, _ in pairs]), tables=("queue",))}
        mine = Counter(key for _, key in pairs)
        kept: dict[str, int] = {}
        parked: set[int] = set()
        for item in limited:       # claim order
            slots = [(key, limit, found[(item.id, key)]) for key, limit in item.concurrency]
            if any(ahead > 0 and held - mine[key] + ahead + kept.get(key, 0) >= limit
                   for key, limit, (ahead, held) in slots):
                parked.add(item.id)
                continue
            for key, _ in item.concurrency:
                kept[key] = kept.get(key, 0) + 1
        if not parked:
            return items
        self._send("UPDATE queue SET owner=NULL, lease_until=NULL, blocked=true "
                   "WHERE id = ANY(%s) AND owner=%s", (sorted(parked), owner), tables=("queue",))
        return [item for item in items if item.id not in parked]

    def slots_free_now(self, concurrency: Sequence[tuple[str, int]], now: int) -> bool:
        # The keys' locks (see count_held), but only if free at once: a transaction deciding on
        # a key now (a claim, a wake-up) may be about to take its slots, and waiting for it
        # here could deadlock with it (this transaction may go on to lock other keys). So a
        # contended key sends the run through the queue, where the claim decides. Both
        # statements are sent together: the count, a later statement, sees every transaction
        # committed before the locks were taken.
        keys = sorted({key for key, _ in concurrency})
        locks = (self._send(_TRY_LOCKS, ([f"c:{key}" for key in keys],), tables=())
                 if self.writable else None)
        state = self._rows(_SLOT_STATE, (now, now, keys))
        if locks is not None:
            row = locks.fetchone()
            if row is None or not row[0]:
                return False
            self._locked.update(f"c:{key}" for key in keys)
        found = {key: (int(held), bool(waiting)) for key, held, waiting in state}
        return all(not found[key][1] and found[key][0] < limit for key, limit in concurrency)

    def count_held(self, key: str) -> int:
        # The lock makes "count, then keep or park the claimed item" atomic across processes:
        # a concurrent claimer of the same key waits until this transaction commits, and its
        # count (a later statement) then sees this one's claims.
        self.lock(f"c:{key}")
        row = self._one(f"SELECT {held_sql('%s')}", (key, key))
        return 0 if row is None else int(row[0])

    def block_item(self, item_id: int, owner: str) -> None:
        self._send("UPDATE queue SET owner=NULL, lease_until=NULL, blocked=true "
                   "WHERE id=%s AND owner=%s", (item_id, owner))

    def unblock_all(self) -> int:
        count = self._count("UPDATE queue SET blocked=false WHERE blocked")
        self.notify = self.notify or count > 0
        return count

    def _wake(self, rows: Iterable[Row]) -> None:
        """Slots freed for these (ck1, ck2, owner) rows: for each key a held item released, let
        the oldest item blocked on it compete again."""
        keys = [k for row in rows if row[2] is not None for k in row[:2] if k is not None]
        # Under the key's lock (see count_held): a claim deciding on the same key either
        # committed already, so its parked item is visible here and competes by priority, or
        # waits for this transaction, then yields to the item woken here if it is older
        # (`yield_to_woken`) and else counts the freed slot.
        self.lock(*(f"c:{key}" for key in keys))
        for key in keys:
            self.notify = True
            self._send(
                "UPDATE queue SET blocked=false WHERE id = (SELECT id FROM queue "
                f"WHERE blocked AND (ck1 = %s OR ck2 = %s) ORDER BY {WAKE_ORDER} "
                "LIMIT 1 FOR UPDATE SKIP LOCKED)", (key, key))
