"""count_runs on both backends: exact below the cap, the cap above it, per function and status."""

from __future__ import annotations

import pytest

from stepwell.store.base import RunRow, Store, Tx

pytestmark = pytest.mark.postgres_strict     # part of the storage contract


async def test_counts_are_exact_below_the_cap_and_capped_above(store: Store) -> None:
    def seed(tx: Tx) -> None:
        for n in range(12):
            tx.insert_run(RunRow(f"a{n}", "app/a", [], n, status="queued"))
        for n in range(3):
            tx.insert_run(RunRow(f"b{n}", "app/b", [], n, status="queued"))
        tx.insert_run(RunRow("a-skipped", "app/a", [], 99, status="skipped"))

    await store.write(seed)
    assert await store.read(lambda tx: tx.count_runs("app/a", "queued", 100)) == 12
    assert await store.read(lambda tx: tx.count_runs("app/a", "queued", 5)) == 5
    assert await store.read(lambda tx: tx.count_runs("app/a", "skipped", 100)) == 1
    assert await store.read(lambda tx: tx.count_runs("app/b", "queued", 100)) == 3
    assert await store.read(lambda tx: tx.count_runs("app/b", "failed", 100)) == 0
    assert await store.read(lambda tx: tx.count_runs("app/none", "queued", 100)) == 0
