"""`Tx` for Postgres, the fast path of a concurrency-limited run (`Tx.slots_free_now`, documented
in store/base.py): whether a new run may be leased in the transaction that creates it. Kept
apart from postgres_tx so that module stays about the queue's main statements."""

from __future__ import annotations

from collections.abc import Sequence

from stepwell.store.postgres_sql import Pipe

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


class SlotsTx(Pipe):
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
