"""The queue's rules, defined once: what `enqueue` does to an existing item, what a release does
to the item it gives back, and the order items are claimed and woken in.

Each rule is written here twice over *one* definition: as a plain Python function (the
reference, read by people and by tests/store/test_queue_rules.py) and as the SQL both backends
run, generated from one dialect-neutral template (`upsert_sql`, `rearm_set`). They stay in SQL
rather than moving to Python above the seam because each is one statement decided on the row
as the database holds it when the statement runs: in Python, `enqueue` would become a read, a
decision and a write (a second round trip on Postgres, on the hottest path of the engine, and a
lock on the key to make it safe under READ COMMITTED), and the bulk release of many items would
become one read per item. The test runs every starting state through the SQL of each backend
and checks the result against the Python function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from stepwell.core.queue import EXEC
from stepwell.store.base import QueueItem

# Ready items are claimed, and items blocked on a concurrency key woken, in this order: the
# backlog's priority (a run's due time, earlier for a higher priority), then age.
CLAIM_ORDER = "priority_at, id"
WAKE_ORDER = CLAIM_ORDER
# Timer items (leased ahead of their instant) in the order they become due.
TIMER_ORDER = "due_at, id"


def held_sql(key: str) -> str:
    """SQL for the slots of concurrency key `key` (a placeholder or a column) in use: the
    leased items holding it as their first or second key (`queue_held_*`, a probe each)."""
    return (f"(SELECT count(*) FROM queue WHERE owner IS NOT NULL AND ck1 = {key}) + "
            f"(SELECT count(*) FROM queue WHERE owner IS NOT NULL AND ck2 = {key})")


def claim_key(item: QueueItem) -> tuple[int, int]:
    """`CLAIM_ORDER` for items in memory (a claim's `RETURNING` rows come in any order)."""
    return (item.priority_at if item.priority_at is not None else item.due_at, item.id)


def timer_key(item: QueueItem) -> tuple[int, int]:
    """`TIMER_ORDER` for items in memory."""
    return (item.due_at, item.id)


@dataclass(frozen=True, slots=True)
class Slot:
    """The columns of a queue item these rules read and decide."""

    due_at: int
    priority_at: int
    owner: str | None = None
    lease_until: int | None = None
    rerun: bool = False        # enqueued again while leased: run again when released
    timer: bool = False        # only time can make it due sooner (see Tx.release_item)
    blocked: bool = False      # parked until a slot of one of its concurrency keys frees
    keyed: bool = False        # holds concurrency keys (ck1 is set)
    kind: str = EXEC


def merge_enqueue(old: Slot, due_at: int, priority_at: int, owner: str | None,
                  lease_until: int | None) -> Slot:
    """`Tx.enqueue` on an existing key: its due time and priority only move earlier; a leased
    item is flagged to run again when released; a free, unblocked item without concurrency keys
    is leased to the caller (if it asks; its flag is then cleared: the caller runs it now), a
    keyed one never (it must be claimed, which checks its slots); a blocked one stays blocked
    and unleased; the timer flag is cleared."""
    free = old.owner is None
    leasable = free and not old.blocked and not old.keyed
    return replace(
        old, due_at=min(old.due_at, due_at), priority_at=min(old.priority_at, priority_at),
        owner=None if old.blocked else old.owner if not free else owner if not old.keyed
        else None,
        lease_until=lease_until if leasable else old.lease_until,
        rerun=True if not free else False if leasable and owner is not None else old.rerun,
        timer=False)


def leased_to(row: Sequence[Any], owner: str | None) -> int | None:
    """`Tx.enqueue`'s answer from the upsert's (id, owner, rerun): the id if this call leased
    the item to `owner`. An item already leased, even to `owner` (another of its sessions is
    working on the run right now), was flagged to run again instead: leasing it a second time
    would run the run twice at once."""
    item_id, holder, rerun = row
    return int(item_id) if owner is not None and holder == owner and not rerun else None


def rearm(old: Slot, due_at: int, now: int, timer: bool) -> Slot:
    """`Tx.release_item` giving an item back for `due_at`: unleased, due then (or `now`, and
    earlier in the backlog, if it was flagged to run again meanwhile); it stays a timer only if
    asked, not flagged, an exec item and without concurrency keys."""
    due = min(due_at, now) if old.rerun else due_at
    return replace(old, owner=None, lease_until=None, due_at=due, priority_at=due,
                   timer=timer and not old.rerun and old.kind == EXEC and not old.keyed,
                   rerun=False)


@dataclass(frozen=True, slots=True)
class Dialect:
    """What the two SQL dialects spell differently in these statements."""

    least: str          # two-argument minimum
    true: str
    false: str


SQLITE = Dialect(least="min", true="1", false="0")
POSTGRES = Dialect(least="least", true="true", false="false")


def upsert_sql(d: Dialect) -> str:
    """`merge_enqueue` as the `ON CONFLICT` clause of the insert. It returns the id, the owner
    and the rerun flag: the caller got the lease if the owner is the caller and the flag is not
    set (set, the item was already leased, possibly to the caller's own process, whose holder
    will run it again: `leased_to`)."""
    return (
        "ON CONFLICT (unique_key) DO UPDATE SET "
        f"due_at = {d.least}(queue.due_at, excluded.due_at), "
        f"priority_at = {d.least}(queue.priority_at, excluded.priority_at), "
        f"rerun = CASE WHEN queue.owner IS NOT NULL THEN {d.true} "
        "WHEN excluded.owner IS NOT NULL AND NOT queue.blocked AND queue.ck1 IS NULL "
        f"THEN {d.false} ELSE queue.rerun END, "
        f"timer = {d.false}, "
        "lease_until = CASE WHEN queue.owner IS NULL AND NOT queue.blocked "
        "AND queue.ck1 IS NULL THEN excluded.lease_until ELSE queue.lease_until END, "
        "owner = CASE WHEN queue.blocked THEN NULL WHEN queue.owner IS NOT NULL "
        "THEN queue.owner WHEN queue.ck1 IS NULL THEN excluded.owner END "
        "RETURNING id, owner, rerun")


def rearm_set(d: Dialect, *, due: str, now: str, timer: str) -> str:
    """`rearm` as the SET list of an UPDATE of `queue`, given the SQL of its three inputs
    (placeholders, or a bulk write's array columns)."""
    least = f"{d.least}({due}, {now})"
    return (
        "owner = NULL, lease_until = NULL, "
        f"due_at = CASE WHEN queue.rerun THEN {least} ELSE {due} END, "
        f"priority_at = CASE WHEN queue.rerun THEN {least} ELSE {due} END, "
        f"timer = ({timer} AND NOT queue.rerun AND queue.kind = '{EXEC}' "
        "AND queue.ck1 IS NULL AND queue.ck2 IS NULL), "
        f"rerun = {d.false}")
