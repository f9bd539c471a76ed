"""The storage contract, durable streams (`StreamItem`): per-channel offsets, a keyed publish
that a replay makes again, reading from an offset, the channels of a step attempt, and
retention, on every backend."""

from __future__ import annotations

import asyncio

import pytest

from stepwell.store.base import RunRow, Store, StreamItem, Tx

pytestmark = pytest.mark.postgres_strict

NOW = 1_000_000


def item(channel: str, data: object, *, run: str | None = "r1", step: str | None = None,
         attempt: int | None = None, topic: str = "t") -> StreamItem:
    return StreamItem(channel, 0, topic, data, run, step, attempt, NOW)


async def test_offsets_count_from_one_per_channel_and_reads_resume_after_one(
        store: Store) -> None:
    offsets = await store.write(lambda tx: [
        tx.publish_item(item("run:r1", {"n": 1}), None),
        tx.publish_item(item("run:r1", {"n": 2}), None),
        tx.publish_item(item("user:7", "other channel"), None),
        tx.publish_item(item("run:r1", [3, "three"], step="s", attempt=0, topic="tok"), None)])
    assert offsets == [1, 2, 1, 3]
    items = await store.read(lambda tx: tx.read_stream("run:r1", 0, 100))
    assert [(i.offset, i.data) for i in items] == [(1, {"n": 1}), (2, {"n": 2}),
                                                   (3, [3, "three"])]
    assert items[2] == StreamItem("run:r1", 3, "tok", [3, "three"], "r1", "s", 0, NOW)
    assert [i.offset for i in await store.read(lambda tx: tx.read_stream("run:r1", 1, 1))] == [2]
    assert await store.read(lambda tx: tx.read_stream("run:r1", 3, 100)) == []
    assert await store.read(lambda tx: tx.read_stream("nobody", 0, 100)) == []


async def test_a_keyed_publish_made_again_appends_nothing(store: Store) -> None:
    first = await store.write(lambda tx: tx.publish_item(item("c", "once"), "r1:0"))
    again = await store.write(lambda tx: tx.publish_item(item("c", "replayed"), "r1:0"))
    other = await store.write(lambda tx: tx.publish_item(item("c", "next"), "r1:1"))
    assert (first, again, other) == (1, 1, 2)
    assert [i.data for i in await store.read(lambda tx: tx.read_stream("c", 0, 10))] == [
        "once", "next"]


async def test_concurrent_publishers_never_share_an_offset(store: Store) -> None:
    await asyncio.gather(*[store.write(lambda tx, n=n: tx.publish_item(item("c", n), None))
                           for n in range(40)])
    items = await store.read(lambda tx: tx.read_stream("c", 0, 100))
    assert [i.offset for i in items] == list(range(1, 41))
    assert sorted(i.data for i in items) == list(range(40))


async def test_the_channels_of_a_step_attempt(store: Store) -> None:
    await store.write(lambda tx: [
        tx.publish_item(item("run:r1", 1, step="s", attempt=0), None),
        tx.publish_item(item("user:7", 2, step="s", attempt=0), None),
        tx.publish_item(item("run:r1", 3, step="s", attempt=1), None),
        tx.publish_item(item("run:r1", 4), None)])
    assert await store.read(lambda tx: tx.attempt_channels("r1", "s", 0)) == ["run:r1", "user:7"]
    assert await store.read(lambda tx: tx.attempt_channels("r1", "s", 1)) == ["run:r1"]
    assert await store.read(lambda tx: tx.attempt_channels("r1", "s", 2)) == []


async def test_retention_deletes_a_run_s_items_with_the_run(store: Store) -> None:
    def fill(tx: Tx) -> None:
        for run_id in ("old", "new"):
            tx.insert_run(RunRow(run_id, "shop/a", [], NOW))
        tx.finish_run("old", "completed", NOW + 1)
        tx.publish_item(item("run:old", 1, run="old"), None)
        tx.publish_item(item("run:new", 2, run="new"), None)
    await store.write(fill)
    await store.write(lambda tx: tx.prune(NOW + 10, NOW + 10, 100))
    assert await store.read(lambda tx: tx.read_stream("run:old", 0, 10)) == []
    assert [i.data for i in await store.read(lambda tx: tx.read_stream("run:new", 0, 10))] == [2]
