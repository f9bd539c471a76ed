"""Timer items on both backends: which released items may be leased ahead of their due time
(`claim_timers`), and that anything other than time moving them clears the flag."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from stepwell.store.base import RunRow, Store, Tx

NOW = 1_000_000


pytestmark = pytest.mark.postgres_strict     # part of the storage contract


async def write(store: Store, fn: Callable[[Tx], Any]) -> Any:
    return await store.write(fn)


async def leased_exec(store: Store, run_id: str, *, concurrency: list[tuple[str, int]] | None = None
                      ) -> int:
    def script(tx: Tx) -> int:
        tx.insert_run(RunRow(run_id, "app/fn", [], NOW))
        item = tx.enqueue("exec", f"exec:{run_id}", NOW, run_id=run_id, owner="w",
                          lease_until=NOW + 30_000, concurrency=concurrency or [])
        assert item is not None
        return item

    item: int = await write(store, script)
    return item


async def test_a_released_timer_is_claimed_ahead_and_only_within_the_horizon(
        store: Store) -> None:
    item = await leased_exec(store, "r1")
    assert await write(store, lambda tx: tx.release_item(item, "w", NOW + 10_000, NOW,
                                                         timer=True))
    assert await store.read(lambda tx: tx.next_timer_at()) == NOW + 10_000
    assert await store.read(lambda tx: tx.next_due_at()) == NOW + 10_000
    assert await write(store, lambda tx: tx.claim_timers(NOW + 9_999, "w2", NOW + 1, 10)) == []
    [claimed] = await write(store, lambda tx: tx.claim_timers(NOW + 10_000, "w2", NOW + 1, 10))
    assert claimed.id == item and claimed.due_at == NOW + 10_000 and claimed.run_id == "r1"
    assert await store.read(lambda tx: tx.next_timer_at()) is None      # leased now
    got = await store.read(lambda tx: tx.get_item("exec:r1"))
    assert got is not None and got.owner == "w2"


async def test_timers_come_earliest_first_up_to_the_limit(store: Store) -> None:
    items = [await leased_exec(store, f"r{n}") for n in range(4)]
    for n, item in enumerate(items):
        due = NOW + 4_000 - n * 1_000
        await write(store, lambda tx, i=item, d=due: tx.release_item(i, "w", d, NOW, timer=True))
    claimed = await write(store, lambda tx: tx.claim_timers(NOW + 60_000, "w2", NOW + 1, 3))
    assert [c.due_at for c in claimed] == [NOW + 1_000, NOW + 2_000, NOW + 3_000]


async def test_an_ordinary_release_is_not_a_timer(store: Store) -> None:
    item = await leased_exec(store, "r1")
    await write(store, lambda tx: tx.release_item(item, "w", NOW + 10_000, NOW))
    assert await store.read(lambda tx: tx.next_timer_at()) is None
    assert await write(store, lambda tx: tx.claim_timers(NOW + 60_000, "w2", NOW + 1, 10)) == []


async def test_items_holding_concurrency_slots_are_never_timers(store: Store) -> None:
    item = await leased_exec(store, "r1", concurrency=[("c:fn", 2)])
    await write(store, lambda tx: tx.release_item(item, "w", NOW + 10_000, NOW, timer=True))
    assert await store.read(lambda tx: tx.next_timer_at()) is None


async def test_a_rerun_flag_wins_over_the_timer(store: Store) -> None:
    item = await leased_exec(store, "r1")
    # An event resolves the run's wait while the item is leased: it must run again at once.
    await write(store, lambda tx: tx.enqueue("exec", "exec:r1", NOW + 5, run_id="r1"))
    await write(store, lambda tx: tx.release_item(item, "w", NOW + 10_000, NOW + 5, timer=True))
    got = await store.read(lambda tx: tx.get_item("exec:r1"))
    assert got is not None and got.owner is None and got.due_at == NOW + 5
    assert await store.read(lambda tx: tx.next_timer_at()) is None


async def test_enqueueing_again_clears_the_timer(store: Store) -> None:
    item = await leased_exec(store, "r1")
    await write(store, lambda tx: tx.release_item(item, "w", NOW + 10_000, NOW, timer=True))
    await write(store, lambda tx: tx.enqueue("exec", "exec:r1", NOW + 20, run_id="r1"))
    assert await store.read(lambda tx: tx.next_timer_at()) is None
    assert await store.read(lambda tx: tx.next_due_at()) == NOW + 20


async def test_other_item_kinds_are_never_timers(store: Store) -> None:
    def script(tx: Tx) -> int | None:
        return tx.enqueue("cron", "cron:app/fn:0", NOW, owner="w", lease_until=NOW + 30_000)

    item = await write(store, script)
    assert item is not None
    await write(store, lambda tx: tx.release_item(item, "w", NOW + 60_000, NOW, timer=True))
    assert await store.read(lambda tx: tx.next_timer_at()) is None


async def test_load_run_states_reads_several_runs_at_once(store: Store) -> None:
    for n in range(3):
        await leased_exec(store, f"r{n}")
    states = await store.read(lambda tx: tx.load_run_states(["r0", "r2", "missing"]))
    assert sorted(states) == ["r0", "r2"]
    assert states["r2"].run.id == "r2" and states["r2"].run.status == "queued"
