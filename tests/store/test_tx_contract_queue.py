"""The storage contract, part 2: the queue (enqueue's upsert rules, claims, leases, concurrency
slots and the wake order of blocked items). See test_tx_contract_runs.py for what the suite is."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from stepwell.runtime import admission
from stepwell.store.base import QueueItem, Store, Tx

pytestmark = pytest.mark.postgres_strict

NOW = 1_000_000
LEASE = NOW + 30_000


async def item(store: Store, key: str) -> QueueItem:
    found = await store.read(lambda tx: tx.get_item(key))
    assert found is not None, f"no queue item {key!r}"
    return found


async def claim_keys(store: Store, now: int = NOW, owner: str = "w", limit: int = 100
                     ) -> list[str]:
    claimed = await store.write(lambda tx: tx.claim_due(now, owner, LEASE, limit))
    return [i.unique_key for i in claimed]


# --- enqueue ---------------------------------------------------------------------------------


async def test_enqueue_inserts_and_leases_the_new_item_only_to_an_owner(store: Store) -> None:
    assert await store.write(lambda tx: tx.enqueue("exec", "free", NOW, run_id="r1")) is None
    leased = await store.write(lambda tx: tx.enqueue("exec", "mine", NOW, run_id="r2",
                                                     owner="w", lease_until=LEASE))
    assert isinstance(leased, int)
    free, mine = await item(store, "free"), await item(store, "mine")
    assert (free.kind, free.run_id, free.due_at, free.priority_at, free.owner) == (
        "exec", "r1", NOW, NOW, None)
    assert (mine.id, mine.owner) == (leased, "w")
    assert await store.read(lambda tx: tx.get_item("nope")) is None


async def test_enqueue_on_an_existing_key_only_moves_it_earlier(store: Store) -> None:
    first = await store.write(lambda tx: tx.enqueue(
        "cron", "k", NOW + 100, payload={"n": 1}, priority_at=NOW + 90))
    assert first is None
    await store.write(lambda tx: tx.enqueue("cron", "k", NOW + 200, payload={"n": 2},
                                            priority_at=NOW + 300))
    got = await item(store, "k")
    assert (got.due_at, got.priority_at, got.payload) == (NOW + 100, NOW + 90, {"n": 1})
    await store.write(lambda tx: tx.enqueue("cron", "k", NOW + 50, payload={"n": 3}))
    moved = await item(store, "k")
    # One item per key: same id, same payload; due and priority moved to the earlier time.
    assert (moved.id, moved.due_at, moved.priority_at, moved.payload) == (
        got.id, NOW + 50, NOW + 50, {"n": 1})


async def test_enqueue_leases_an_existing_free_item_to_the_caller(store: Store) -> None:
    await store.write(lambda tx: tx.enqueue("exec", "k", NOW + 10, run_id="r1"))
    leased = await store.write(lambda tx: tx.enqueue("exec", "k", NOW, run_id="r1", owner="w",
                                                     lease_until=LEASE))
    got = await item(store, "k")
    assert leased == got.id and got.owner == "w" and got.due_at == NOW
    assert await claim_keys(store, now=NOW + 10) == []


async def test_enqueue_on_a_leased_item_flags_it_to_run_again_on_release(store: Store) -> None:
    held = await store.write(lambda tx: tx.enqueue("exec", "k", NOW, run_id="r1", owner="w1",
                                                   lease_until=LEASE))
    assert held is not None
    # Another worker (an event resuming the run) while w1 holds it: not leased to w2.
    assert await store.write(lambda tx: tx.enqueue("exec", "k", NOW + 1, run_id="r1",
                                                   owner="w2", lease_until=LEASE)) is None
    assert (await item(store, "k")).owner == "w1"
    # w1 finishes and asks for the item to be deleted: it is re-armed for now instead.
    assert await store.write(lambda tx: tx.release_item(held, "w1", None, NOW + 5))
    got = await item(store, "k")
    assert (got.id, got.owner, got.due_at, got.priority_at) == (held, None, NOW + 5, NOW + 5)
    # Once handled, the flag is gone: the next release that deletes it deletes it.
    assert await claim_keys(store, now=NOW + 5) == ["k"]
    assert await store.write(lambda tx: tx.release_item(held, "w", None, NOW + 6))
    assert await store.read(lambda tx: tx.get_item("k")) is None


async def test_enqueue_on_an_item_the_same_owner_holds_does_not_lease_it_twice(
        store: Store) -> None:
    """A session of w is suspending the run when an event resumes it in the same process: the
    enqueue must not hand w the item again (two sessions would run the run at once); the
    flag makes the holder's release re-arm it, and a claim then resumes the run once."""
    held = await store.write(lambda tx: tx.enqueue("exec", "k", NOW, run_id="r1", owner="w",
                                                   lease_until=LEASE))
    assert held is not None
    assert await store.write(lambda tx: tx.enqueue("exec", "k", NOW + 1, run_id="r1",
                                                   owner="w", lease_until=LEASE)) is None
    assert await store.write(lambda tx: tx.release_item(held, "w", None, NOW + 5))
    got = await item(store, "k")
    assert (got.id, got.owner, got.due_at) == (held, None, NOW + 5)
    assert await claim_keys(store, now=NOW + 5) == ["k"]


async def test_a_flagged_item_re_armed_for_later_runs_again_now(store: Store) -> None:
    held = await store.write(lambda tx: tx.enqueue("exec", "k", NOW, run_id="r1", owner="w",
                                                   lease_until=LEASE))
    assert held is not None
    await store.write(lambda tx: tx.enqueue("exec", "k", NOW, run_id="r1"))
    assert await store.write(lambda tx: tx.release_item(held, "w", NOW + 9_000, NOW + 5))
    got = await item(store, "k")
    assert (got.owner, got.due_at, got.priority_at) == (None, NOW + 5, NOW + 5)


async def test_an_existing_item_holding_slots_is_never_leased_by_enqueue(store: Store) -> None:
    await store.write(lambda tx: tx.enqueue("exec", "k", NOW, run_id="r1",
                                            concurrency=[("c:fn:a", 1)]))
    assert await store.write(lambda tx: tx.enqueue("exec", "k", NOW, run_id="r1", owner="w",
                                                   lease_until=LEASE)) is None
    assert (await item(store, "k")).owner is None
    claimed = await store.write(lambda tx: tx.claim_due(NOW, "w", LEASE, 10))
    assert [(i.unique_key, i.concurrency) for i in claimed] == [("k", [("c:fn:a", 1)])]


async def test_enqueue_leaves_a_blocked_item_parked(store: Store) -> None:
    await store.write(lambda tx: tx.enqueue("exec", "k", NOW + 10, run_id="r1",
                                            concurrency=[("c:fn:a", 1)]))
    [claimed] = await store.write(lambda tx: tx.claim_due(NOW + 10, "w", LEASE, 10))
    await store.write(lambda tx: tx.block_item(claimed.id, "w"))
    assert await store.write(lambda tx: tx.enqueue("exec", "k", NOW, run_id="r1", owner="w",
                                                   lease_until=LEASE)) is None
    got = await item(store, "k")
    assert (got.owner, got.due_at) == (None, NOW)
    assert await claim_keys(store, now=NOW + 10) == []                 # still blocked
    assert await store.read(lambda tx: tx.count_ready(NOW + 10)) == 0


# --- claims ----------------------------------------------------------------------------------


async def test_claim_due_leases_ready_items_in_priority_order_up_to_a_limit(
        store: Store) -> None:
    def script(tx: Tx) -> None:
        tx.enqueue("exec", "a", NOW, run_id="ra", priority_at=NOW + 10)
        tx.enqueue("exec", "b", NOW - 7, run_id="rb", priority_at=NOW - 5, payload={"p": 1})
        tx.enqueue("exec", "later", NOW + 1, run_id="rl")
        tx.enqueue("exec", "d", NOW, run_id="rd", priority_at=NOW + 10)     # ties: by id
        tx.enqueue("exec", "held", NOW, run_id="rh", owner="other", lease_until=LEASE)

    await store.write(script)
    first = await store.write(lambda tx: tx.claim_due(NOW, "w", LEASE, 2))
    assert [i.unique_key for i in first] == ["b", "a"]
    b = first[0]
    assert (b.kind, b.run_id, b.due_at, b.priority_at, b.payload, b.concurrency) == (
        "exec", "rb", NOW - 7, NOW - 5, {"p": 1}, [])
    assert await claim_keys(store) == ["d"]
    assert await claim_keys(store) == []
    assert [(await item(store, k)).owner for k in ("a", "b", "d", "held", "later")] == [
        "w", "w", "w", "other", None]
    assert await claim_keys(store, now=NOW + 1, owner="w2") == ["later"]


async def test_claim_due_takes_ready_items_whatever_their_concurrency_keys(
        store: Store) -> None:
    """The store leases in priority order and nothing else; deciding which claimed items may
    hold their slots is the caller's (`admission.claim`), the same on every backend."""
    def script(tx: Tx) -> None:
        for n in range(3):
            tx.enqueue("exec", f"x{n}", NOW + n, run_id=f"x{n}", concurrency=[("c:k", 1)])
        tx.enqueue("exec", "y", NOW + 3, run_id="y", concurrency=[("c:j", 5), ("c:k", 1)])
        tx.enqueue("exec", "z", NOW + 4, run_id="z")

    await store.write(script)
    claimed = await store.write(lambda tx: tx.claim_due(NOW + 10, "w", LEASE, 10))
    assert [(i.unique_key, i.concurrency) for i in claimed] == [
        ("x0", [("c:k", 1)]), ("x1", [("c:k", 1)]), ("x2", [("c:k", 1)]),
        ("y", [("c:j", 5), ("c:k", 1)]), ("z", [])]
    assert await store.read(lambda tx: tx.count_held("c:k")) == 4
    assert await store.read(lambda tx: tx.count_held("c:j")) == 1


async def test_admission_claim_keeps_each_key_within_its_limit_in_priority_order(
        store: Store) -> None:
    """The claim rule on top of the store: per key, the oldest items up to the limit (minus
    the slots already held) are kept, the rest parked in order; other keys are not held up."""
    def script(tx: Tx) -> None:
        tx.enqueue("exec", "running", NOW, run_id="r", owner="w0", lease_until=LEASE,
                   concurrency=[("c:k", 2)])
        for n in range(4):
            tx.enqueue("exec", f"k{n}", NOW + n, run_id=f"k{n}", concurrency=[("c:k", 2)])
        tx.enqueue("exec", "j0", NOW + 9, run_id="j0", concurrency=[("c:j", 1)])

    await store.write(script)
    kept = await store.write(lambda tx: admission.claim(tx, NOW + 10, "w", LEASE, 10))
    assert [i.unique_key for i in kept] == ["k0", "j0"]       # k: one slot was free
    assert await store.read(lambda tx: tx.count_held("c:k")) == 2
    assert await claim_keys(store, now=NOW + 10) == []        # k1..k3 are parked
    # The running item ends: the oldest parked item competes again, and takes the slot.
    running = await item(store, "running")
    await store.write(lambda tx: tx.release_item(running.id, "w0", None, NOW + 11))
    kept = await store.write(lambda tx: admission.claim(tx, NOW + 11, "w", LEASE, 10))
    assert [i.unique_key for i in kept] == ["k1"]


async def test_count_held_counts_leased_items_holding_the_key_in_either_slot(
        store: Store) -> None:
    def script(tx: Tx) -> None:
        tx.enqueue("exec", "first", NOW, owner="w", lease_until=LEASE, concurrency=[("c:k", 3)])
        tx.enqueue("exec", "second", NOW, owner="w", lease_until=LEASE,
                   concurrency=[("c:j", 3), ("c:k", 3)])
        tx.enqueue("exec", "free", NOW, concurrency=[("c:k", 3)])
        tx.enqueue("exec", "other", NOW, owner="w", lease_until=LEASE, concurrency=[("c:x", 3)])

    await store.write(script)
    assert await store.read(lambda tx: tx.count_held("c:k")) == 2
    assert await store.read(lambda tx: tx.count_held("c:j")) == 1
    assert await store.read(lambda tx: tx.count_held("c:none")) == 0


async def test_slots_free_now_needs_a_free_slot_and_nothing_waiting_on_every_key(
        store: Store) -> None:
    """The fast path's question for a new limited run: below the limit on each key (counting
    leased holders in either slot) and no unleased item on it due by now (blocked or ready),
    so a new run never goes ahead of one already waiting."""
    def free(*concurrency: tuple[str, int], now: int = NOW) -> Callable[[Tx], bool]:
        return lambda tx: tx.slots_free_now(list(concurrency), now)

    def seed(tx: Tx) -> None:
        tx.enqueue("exec", "held", NOW, owner="w", lease_until=LEASE,
                   concurrency=[("c:j", 9), ("c:k", 2)])
        tx.enqueue("exec", "later", NOW + 50, concurrency=[("c:late", 1)])
        tx.enqueue("exec", "ready", NOW, concurrency=[("c:x", 5), ("c:ready", 5)])

    await store.write(seed)
    assert await store.write(free(("c:k", 2)))                   # one of two slots held
    assert not await store.write(free(("c:k", 1)))               # full
    assert not await store.write(free(("c:j", 1)))               # held as second key
    assert await store.write(free(("c:none", 1), ("c:k", 2)))
    assert not await store.write(free(("c:none", 1), ("c:k", 1)))   # every key must be free
    assert await store.write(free(("c:late", 1)))                # waiting, but not due yet
    assert not await store.write(free(("c:late", 1), now=NOW + 50))
    assert not await store.write(free(("c:ready", 5)))           # a ready item waits first
    assert not await store.write(free(("c:x", 5)))               # ... whatever its slot
    # A parked (blocked) item waits too, with no slot held at all.
    [claimed] = await store.write(lambda tx: tx.claim_due(NOW, "w2", LEASE, 1))
    assert claimed.unique_key == "ready"
    assert await store.write(free(("c:ready", 5)))               # leased: holds one of 5
    await store.write(lambda tx: tx.block_item(claimed.id, "w2"))
    assert await store.read(lambda tx: tx.count_held("c:ready")) == 0
    assert not await store.write(free(("c:ready", 5)))


async def test_slots_free_now_sees_the_items_of_its_own_transaction(store: Store) -> None:
    """Several runs created in one transaction (one send, one commit group) take the slots
    one after another, and the first one that must wait stops the rest."""
    def script(tx: Tx) -> list[bool]:
        answers = []
        for n in range(4):
            slot = tx.slots_free_now([("c:k", 2)], NOW)
            answers.append(slot)
            tx.enqueue("exec", f"r{n}", NOW, run_id=f"r{n}", concurrency=[("c:k", 2)],
                       owner="w" if slot else None, lease_until=LEASE if slot else None)
        return answers

    assert await store.write(script) == [True, True, False, False]
    assert await store.read(lambda tx: tx.count_held("c:k")) == 2


async def test_block_item_parks_only_the_owners_item(store: Store) -> None:
    await store.write(lambda tx: tx.enqueue("exec", "k", NOW, concurrency=[("c:k", 1)]))
    [claimed] = await store.write(lambda tx: tx.claim_due(NOW, "w", LEASE, 10))
    await store.write(lambda tx: tx.block_item(claimed.id, "someone-else"))
    assert (await item(store, "k")).owner == "w"
    await store.write(lambda tx: tx.block_item(claimed.id, "w"))
    assert (await item(store, "k")).owner is None
    assert await store.read(lambda tx: (tx.count_held("c:k"), tx.count_ready(NOW),
                                        tx.next_due_at())) == (0, 0, None)
    assert await claim_keys(store) == []
    assert await store.write(lambda tx: tx.unblock_all()) == 1
    assert await store.write(lambda tx: tx.unblock_all()) == 0
    assert await claim_keys(store) == ["k"]


# --- wake order ------------------------------------------------------------------------------


def _free_by_release(tx: Tx, held: QueueItem) -> None:
    tx.release_item(held.id, "w", None, NOW + 1)


def _free_by_rearm(tx: Tx, held: QueueItem) -> None:
    tx.release_item(held.id, "w", NOW + 9_000, NOW + 1)


def _free_by_delete(tx: Tx, held: QueueItem) -> None:
    tx.delete_item(held.id)


def _free_by_ending_the_run(tx: Tx, held: QueueItem) -> None:
    tx.delete_items(run_id="holder")


def _free_by_expiry(tx: Tx, held: QueueItem) -> None:
    assert tx.release_expired_leases(LEASE + 1) == 1


def _free_by_owner(tx: Tx, held: QueueItem) -> None:
    assert tx.release_leases_of("w") == 1


WAKE_ROUTES = [
    # (how the holder's slots are freed, what a claim then finds, in claim order)
    (_free_by_release, ["first", "j"]),
    (_free_by_rearm, ["first", "j"]),                   # the holder is due later
    (_free_by_delete, ["first", "j"]),
    (_free_by_ending_the_run, ["first", "j"]),
    (_free_by_expiry, ["holder", "first", "j"]),        # the holder is free and due again
    (_free_by_owner, ["holder", "first", "j"]),
]


@pytest.mark.parametrize(("free", "expected"), WAKE_ROUTES,
                         ids=["release", "rearm", "delete", "delete_items", "expiry", "owner"])
async def test_a_freed_slot_wakes_the_first_blocked_item_of_each_key(
        store: Store, free: Callable[[Tx, QueueItem], None], expected: list[str]) -> None:
    """Blocked items wake one per freed slot and key, in claim order (priority, then age),
    whichever way the slot is freed; other keys' blocked items stay parked."""
    parked: list[tuple[str, int, Sequence[tuple[str, int]]]] = [
        ("late", NOW + 5, [("c:k", 1)]),
        ("first", NOW + 1, [("c:z", 9), ("c:k", 1)]),       # k in its second slot
        ("tie", NOW + 1, [("c:k", 1)]),                     # same priority, younger
        ("other", NOW, [("c:other", 1)]),
        ("j", NOW + 2, [("c:j", 1)]),
    ]

    def seed(tx: Tx) -> QueueItem:
        for key, priority, slots in parked:
            tx.enqueue("exec", key, NOW, run_id=key, priority_at=priority, concurrency=slots)
        for claimed in tx.claim_due(NOW, "w", LEASE, 10):
            tx.block_item(claimed.id, "w")
        tx.enqueue("exec", "holder", NOW, run_id="holder", owner="w", lease_until=LEASE,
                   concurrency=[("c:k", 1), ("c:j", 1)])
        held = tx.get_item("holder")
        assert held is not None
        return held

    held = await store.write(seed)
    await store.write(lambda tx: free(tx, held))
    assert await claim_keys(store, now=NOW + 10, owner="w2") == expected
    assert await claim_keys(store, now=NOW + 10, owner="w2") == []


# --- leases ----------------------------------------------------------------------------------


async def test_renew_lease_is_compare_and_set_on_the_owner(store: Store) -> None:
    held = await store.write(lambda tx: tx.enqueue("exec", "k", NOW, owner="w",
                                                   lease_until=NOW + 10))
    assert held is not None
    assert await store.write(lambda tx: tx.renew_lease(held, "w", NOW + 100))
    assert not await store.write(lambda tx: tx.renew_lease(held, "thief", NOW + 200))
    assert await store.write(lambda tx: tx.release_expired_leases(NOW + 11)) == 0
    assert await store.write(lambda tx: tx.release_expired_leases(NOW + 101)) == 1
    assert not await store.write(lambda tx: tx.renew_lease(held, "w", NOW + 300))   # lost
    assert not await store.write(lambda tx: tx.renew_lease(10**9, "w", NOW + 300))  # no item


async def test_renew_leases_extends_only_the_owners_items_among_those_named(
        store: Store) -> None:
    def seed(tx: Tx) -> list[int | None]:
        return [tx.enqueue("exec", "a", NOW, owner="w", lease_until=NOW + 10),
                tx.enqueue("exec", "b", NOW, owner="w", lease_until=NOW + 10),
                tx.enqueue("exec", "c", NOW, owner="w", lease_until=NOW + 10),
                tx.enqueue("exec", "theirs", NOW, owner="x", lease_until=NOW + 10)]

    a, b, _c, theirs = await store.write(seed)
    assert await store.write(lambda tx: tx.renew_leases("w", NOW + 100, [a, b, theirs])) == 2
    assert await store.write(lambda tx: tx.renew_leases("w", NOW + 100, [])) == 0
    assert await store.write(lambda tx: tx.release_expired_leases(NOW + 50)) == 2  # c, theirs
    assert sorted(await claim_keys(store, owner="y")) == ["c", "theirs"]


async def test_release_item_deletes_or_re_arms_only_a_held_item(store: Store) -> None:
    def seed(tx: Tx) -> tuple[int | None, int | None]:
        return (tx.enqueue("exec", "gone", NOW, owner="w", lease_until=LEASE),
                tx.enqueue("exec", "again", NOW, owner="w", lease_until=LEASE,
                           priority_at=NOW - 50))

    gone, again = await store.write(seed)
    assert gone is not None and again is not None
    assert not await store.write(lambda tx: tx.release_item(gone, "x", None, NOW))
    assert await store.write(lambda tx: tx.release_item(gone, "w", None, NOW))
    assert await store.read(lambda tx: tx.get_item("gone")) is None
    assert not await store.write(lambda tx: tx.release_item(gone, "w", None, NOW))
    assert await store.write(lambda tx: tx.release_item(again, "w", NOW + 700, NOW))
    got = await item(store, "again")
    assert (got.owner, got.due_at, got.priority_at) == (None, NOW + 700, NOW + 700)
    assert not await store.write(lambda tx: tx.release_item(again, "w", NOW + 1, NOW))


async def test_expired_leases_are_released_strictly_after_their_end(store: Store) -> None:
    def seed(tx: Tx) -> None:
        tx.enqueue("exec", "short", NOW, owner="w", lease_until=NOW + 10)
        tx.enqueue("exec", "long", NOW, owner="w", lease_until=NOW + 20)
        tx.enqueue("exec", "free", NOW)

    await store.write(seed)
    assert await store.write(lambda tx: tx.release_expired_leases(NOW + 10)) == 0
    assert await store.write(lambda tx: tx.release_expired_leases(NOW + 11)) == 1
    assert (await item(store, "short")).owner is None
    assert (await item(store, "long")).owner == "w"


async def test_lease_owners_and_release_leases_of(store: Store) -> None:
    def seed(tx: Tx) -> None:
        for key, owner in (("a", "w1"), ("b", "w1"), ("c", "w2")):
            tx.enqueue("exec", key, NOW, owner=owner, lease_until=LEASE)
        tx.enqueue("exec", "free", NOW)

    await store.write(seed)
    assert sorted(await store.read(lambda tx: tx.lease_owners())) == ["w1", "w2"]
    assert await store.write(lambda tx: tx.release_leases_of("w1")) == 2
    assert await store.write(lambda tx: tx.release_leases_of("w1")) == 0
    assert await store.read(lambda tx: tx.lease_owners()) == ["w2"]
    assert sorted(await claim_keys(store, owner="w3")) == ["a", "b", "free"]


# --- reading and editing items ---------------------------------------------------------------


async def test_next_due_at_and_count_ready_see_only_free_unblocked_items(store: Store) -> None:
    assert await store.read(lambda tx: (tx.next_due_at(), tx.count_ready(NOW))) == (None, 0)

    def seed(tx: Tx) -> None:
        tx.enqueue("exec", "held", NOW - 100, owner="w", lease_until=LEASE)
        tx.enqueue("exec", "soon", NOW - 5)
        tx.enqueue("exec", "now", NOW)
        tx.enqueue("exec", "later", NOW + 50)

    await store.write(seed)
    assert await store.read(lambda tx: tx.next_due_at()) == NOW - 5
    assert await store.read(lambda tx: [tx.count_ready(t) for t in (NOW - 6, NOW, NOW + 50)]
                            ) == [0, 2, 3]


async def test_update_item_replaces_due_time_priority_payload_and_event(store: Store) -> None:
    await store.write(lambda tx: tx.enqueue("debounce", "d", NOW + 10, payload={"e": "1"},
                                            priority_at=NOW - 100, event_id="e1"))
    got = await item(store, "d")
    assert got.event_id == "e1"
    await store.write(lambda tx: tx.update_item(got.id, NOW + 500, {"e": "2", "first_at": 1},
                                                event_id="e2"))
    updated = await item(store, "d")
    assert (updated.id, updated.kind, updated.due_at, updated.priority_at, updated.payload) == (
        got.id, "debounce", NOW + 500, NOW + 500, {"e": "2", "first_at": 1})
    assert updated.event_id == "e2"


async def test_delete_item_and_delete_items_of_a_run(store: Store) -> None:
    def seed(tx: Tx) -> None:
        tx.enqueue("exec", "exec:r1", NOW, run_id="r1", owner="w", lease_until=LEASE)
        tx.enqueue("timeout", "timeout:r1:finish", NOW + 60, run_id="r1")
        tx.enqueue("exec", "exec:r2", NOW, run_id="r2")
        tx.enqueue("cron", "cron:app/fn:0", NOW)

    await store.write(seed)
    await store.write(lambda tx: tx.delete_items(run_id="r1"))
    remaining: list[Any] = await store.read(lambda tx: [
        tx.get_item(k) for k in ("exec:r1", "timeout:r1:finish", "exec:r2", "cron:app/fn:0")])
    assert [i is None for i in remaining] == [True, True, False, False]
    cron = remaining[3]
    await store.write(lambda tx: tx.delete_item(cron.id))
    assert await store.read(lambda tx: tx.get_item("cron:app/fn:0")) is None
    assert await claim_keys(store) == ["exec:r2"]
