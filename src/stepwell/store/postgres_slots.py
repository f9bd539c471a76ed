"""`Tx` for Postgres, the concurrency slots' decisions apart from the queue's main statements
(postgres_tx): the fast path of a concurrency-limited run (`Tx.slots_free_now`, documented in
store/base.py), whether a new run may be leased in the transaction that creates it; and a
claim yielding to an item a concurrent wake-up let go ahead of it (`yield_to_woken`)."""

from __future__ import annotations

from collections.abc import Sequence

from stepwell.store.base import QueueItem
from stepwell.store.postgres_sql import Pipe
from stepwell.store.queue_rules import claim_key

# Without waiting: true if every lock was free (or is held by this transaction already).
_TRY_LOCKS = ("SELECT bool_and(pg_try_advisory_xact_lock(hashtextextended('stepwell:' || k, 0))) "
              "FROM unnest(%s::text[]) AS u(k)")
# Per key: held slots, and whether an unleased item on it is due (`queue_held_*`,
# `queue_waiting_*`: one probe each).
_SLOT_STATE = (
    "SELECT k, (SELECT count(*) FROM queue WHERE owner IS NOT NULL AND ck1 = k) + "
    "(SELECT count(*) FROM queue WHERE owner IS NOT NULL AND ck2 = k), "
    "EXISTS (SELECT 1 FROM queue WHERE owner IS NULL AND ck1 = k AND due_at <= %s) OR "
    "EXISTS (SELECT 1 FROM queue WHERE owner IS NULL AND ck2 = k AND due_at <= %s) "
    "FROM unnest(%s::text[]) AS u(k)")


# Of the claimed items (id, first key, second key, priority), those behind an unleased,
# unblocked item due by now on one of their keys (`queue_order`: only such items, in claim
# order, so the walk stops at the claimed item's place).
_BEHIND = (
    "SELECT c.id FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bigint[]) "
    "AS c(id, k1, k2, p) WHERE EXISTS (SELECT 1 FROM queue q WHERE q.owner IS NULL "
    "AND NOT q.blocked AND q.due_at <= %s AND (q.priority_at, q.id) < (c.p, c.id) "
    "AND (q.ck1 IN (c.k1, c.k2) OR q.ck2 IN (c.k1, c.k2)))")


class SlotsTx(Pipe):
    def yield_to_woken(self, items: list[QueueItem], owner: str, now: int) -> list[QueueItem]:
        """The claimed `items` less those that must wait behind an item a wake-up unblocked
        while this claim was choosing (parked again, blocked, and left out).

        A claim picks its items, then waits for the locks of their keys. A transaction that
        freed a slot of such a key meanwhile held the lock and unblocked the oldest item
        parked on it; that item was not a candidate (blocked when the claim chose). Without
        this, the claim would take the freed slot for a newer item, and the woken one would
        park again behind it: FIFO per key broken (a new run overtaking runs waiting for its
        key). Called with the keys locked; the item woken runs next, and a slot it frees
        wakes the oldest parked item again."""
        limited = [item for item in items if item.concurrency]
        if not limited:
            return items
        keys = [[k for k, _ in item.concurrency] + [None] for item in limited]
        behind = {int(row[0]) for row in self._rows(_BEHIND, (
            [item.id for item in limited], [k[0] for k in keys], [k[1] for k in keys],
            [claim_key(item)[0] for item in limited], now), tables=("queue",))}
        if not behind:
            return items
        self._send("UPDATE queue SET owner=NULL, lease_until=NULL, blocked=true "
                   "WHERE id = ANY(%s) AND owner=%s", (sorted(behind), owner), tables=("queue",))
        return [item for item in items if item.id not in behind]


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
