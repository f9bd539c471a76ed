"""The storage contract, versioned workers: the worker registry (`WorkerRow`), versioned claims
(`ClaimVersions` on `claim_due` and `claim_timers`) and `move_run_version`, on every backend."""

from __future__ import annotations

import pytest

from stepwell.store.base import ClaimVersions, RunRow, Store, Tx, WorkerRow

pytestmark = pytest.mark.postgres_strict

NOW = 1_000_000


def worker(worker_id: str, version: str, heartbeat: int, *, app: str = "shop",
           started: int = NOW) -> WorkerRow:
    return WorkerRow(worker_id, app, version, "host-a", 4242, started, heartbeat)


async def test_workers_register_heartbeat_expire_and_are_removed(store: Store) -> None:
    await store.write(lambda tx: tx.register_workers(
        [worker("w1", "v1", NOW), worker("w1", "v1b", NOW), worker("w2", "v2", NOW + 5),
         worker("w3", "v1", NOW, app="crm", started=NOW - 9)]))
    rows = await store.read(lambda tx: tx.list_workers())
    assert [(w.app_id, w.version, w.id) for w in rows] == [
        ("crm", "v1", "w3"), ("shop", "v1", "w1"), ("shop", "v1b", "w1"), ("shop", "v2", "w2")]
    assert rows[0] == worker("w3", "v1", NOW, app="crm", started=NOW - 9)

    # A heartbeat renews every row of the worker; an unknown worker renews nothing.
    assert await store.write(lambda tx: tx.heartbeat_worker("w1", NOW + 100)) == 2
    assert await store.write(lambda tx: tx.heartbeat_worker("ghost", NOW + 100)) == 0
    # Registering again replaces the row (a worker whose rows were expired comes back).
    await store.write(lambda tx: tx.register_workers([worker("w2", "v2", NOW + 50)]))

    # Rows not renewed since the cutoff are expired; the others stay.
    assert await store.write(lambda tx: tx.expire_workers(NOW + 40)) == 1      # w3
    rows = await store.read(lambda tx: tx.list_workers())
    assert {(w.id, w.version, w.heartbeat_at) for w in rows} == {
        ("w1", "v1", NOW + 100), ("w1", "v1b", NOW + 100), ("w2", "v2", NOW + 50)}
    assert await store.write(lambda tx: tx.remove_workers(["w1", "nobody"])) == 2
    assert [w.id for w in await store.read(lambda tx: tx.list_workers())] == ["w2"]
    assert await store.write(lambda tx: tx.remove_workers([])) == 0


def fill_versions(tx: Tx) -> None:
    """Exec items of runs of several versions, a run without one, and a cron item."""
    for run_id, fn, version in [("r1", "shop/a", "v1"), ("r2", "shop/a", "v2"),
                                ("r3", "shop/b", "v1"), ("r4", "shop/a", None)]:
        tx.insert_run(RunRow(run_id, fn, [], NOW, version=version))
        tx.enqueue("exec", f"exec:{run_id}", NOW, run_id=run_id)
    tx.enqueue("cron", "cron:shop/a:1", NOW)
    tx.enqueue("exec", "exec:gone", NOW, run_id="gone")        # its run row was deleted


async def claimed(store: Store, versions: ClaimVersions | None) -> set[str]:
    items = await store.write(lambda tx: tx.claim_due(NOW, "w", NOW + 30_000, 100,
                                                      versions=versions))
    return {item.unique_key for item in items}


async def test_a_versioned_claim_takes_only_runs_of_its_versions(store: Store) -> None:
    await store.write(fill_versions)
    keys = await claimed(store, ClaimVersions(own=(("shop/a", "v2"), ("shop/b", "v2"))))
    # Its version's run, the run with no version, an item whose run is gone, the cron item.
    assert keys == {"exec:r2", "exec:r4", "exec:gone", "cron:shop/a:1"}
    # An adoptable (function, version) is claimable too; a version of another function is not.
    assert await claimed(store, ClaimVersions(own=(), adopt=(("shop/a", "v1"),))) == {"exec:r1"}
    assert await claimed(store, ClaimVersions(own=(("shop/a", "v2"),))) == set()
    assert await claimed(store, None) == {"exec:r3"}


async def test_a_versioned_claim_skips_refused_runs_of_adopted_versions(store: Store) -> None:
    def fill(tx: Tx) -> None:
        for run_id in ("r1", "r2"):
            tx.insert_run(RunRow(run_id, "shop/a", [], NOW, version="v1"))
            tx.enqueue("exec", f"exec:{run_id}", NOW, run_id=run_id)

    await store.write(fill)
    # A refused run is skipped as an adoption only: its own version's workers still take it.
    refusing = ClaimVersions(own=(), adopt=(("shop/a", "v1"),), refused=("r1", "r9"))
    assert await claimed(store, refusing) == {"exec:r2"}
    assert await claimed(store, ClaimVersions(own=(("shop/a", "v1"),), refused=("r1",))
                         ) == {"exec:r1"}


async def test_an_unversioned_claim_takes_every_run(store: Store) -> None:
    await store.write(fill_versions)
    assert await claimed(store, None) == {"exec:r1", "exec:r2", "exec:r3", "exec:r4",
                                          "exec:gone", "cron:shop/a:1"}


async def test_a_versioned_timer_claim_takes_only_runs_of_its_versions(store: Store) -> None:
    def script(tx: Tx) -> None:
        for run_id, version in [("r1", "v1"), ("r2", "v2")]:
            tx.insert_run(RunRow(run_id, "shop/a", [], NOW, version=version))
            item = tx.enqueue("exec", f"exec:{run_id}", NOW, run_id=run_id, owner="w0",
                              lease_until=NOW + 1)
            assert item is not None
            tx.release_item(item, "w0", NOW + 5_000, NOW, timer=True)

    await store.write(script)
    v2 = ClaimVersions(own=(("shop/a", "v2"),))
    items = await store.write(lambda tx: tx.claim_timers(NOW + 10_000, "w", NOW + 30_000, 10,
                                                         versions=v2))
    assert [item.run_id for item in items] == ["r2"]
    items = await store.write(lambda tx: tx.claim_timers(NOW + 10_000, "w", NOW + 30_000, 10))
    assert [item.run_id for item in items] == ["r1"]


async def test_move_run_version_is_a_compare_and_set_on_active_runs(store: Store) -> None:
    def fill(tx: Tx) -> None:
        tx.insert_run(RunRow("r1", "shop/a", [], NOW, version="v1"))
        tx.insert_run(RunRow("r2", "shop/a", [], NOW))
        tx.insert_run(RunRow("done", "shop/a", [], NOW, version="v1"))
        tx.finish_run("done", "completed", NOW + 1)

    await store.write(fill)
    assert not await store.write(lambda tx: tx.move_run_version("r1", "v0", "v2"))
    assert await store.write(lambda tx: tx.move_run_version("r1", "v1", "v2"))
    assert not await store.write(lambda tx: tx.move_run_version("r1", "v1", "v3"))
    assert await store.write(lambda tx: tx.move_run_version("r2", None, "v2"))
    assert not await store.write(lambda tx: tx.move_run_version("done", "v1", "v2"))
    assert not await store.write(lambda tx: tx.move_run_version("nobody", "v1", "v2"))
    rows = await store.read(lambda tx: [tx.get_run(i) for i in ("r1", "r2", "done")])
    assert [row.version for row in rows if row is not None] == ["v2", "v2", "v1"]
