"""The storage contract, part 3: flow-control state, batches, waits, apps, retention, and
group commit's failure isolation. See test_tx_contract_runs.py for what the suite is."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from stepwell.core.models import Event, Memo
from stepwell.store.base import HeldWindow, RunRow, Store, Tx, UsageRow, WaitRow

pytestmark = pytest.mark.postgres_strict

NOW = 1_000_000


# --- flow-control state and batches ----------------------------------------------------------


async def test_flow_state_is_stored_and_replaced_whole(store: Store) -> None:
    assert await store.read(lambda tx: tx.get_flow("rate:fn:a")) is None
    await store.write(lambda tx: tx.put_flow("rate:fn:a", text="123", expires_at=NOW + 5))
    await store.write(lambda tx: tx.put_flow("single:fn:a", text="run-1"))
    assert await store.read(lambda tx: tx.get_flow("rate:fn:a")) == ("123", NOW + 5)
    assert await store.read(lambda tx: tx.get_flow("single:fn:a")) == ("run-1", None)
    await store.write(lambda tx: tx.put_flow("rate:fn:a", expires_at=NOW + 9))
    assert await store.read(lambda tx: tx.get_flow("rate:fn:a")) == (None, NOW + 9)


async def test_a_batch_counts_its_events_and_is_taken_oldest_first(store: Store) -> None:
    sizes = await store.write(lambda tx: [tx.add_batch_event("b:1", e) for e in ("z", "a", "m")])
    assert sizes == [1, 2, 3]
    assert await store.write(lambda tx: tx.add_batch_event("b:2", "x")) == 1
    assert await store.write(lambda tx: tx.take_batch("b:1")) == ["z", "a", "m"]
    assert await store.write(lambda tx: tx.take_batch("b:1")) == []
    assert await store.write(lambda tx: tx.add_batch_event("b:1", "n")) == 1
    assert await store.write(lambda tx: tx.take_batch("b:2")) == ["x"]



def open_windows(tx: Tx) -> None:
    """Windows as `runtime.admission` writes them: of app/fn (two batches, one holding two
    events, and a debounce without a key), of app/fn:x (whose keys share app/fn's prefix) and
    of app/other, next to an exec item."""
    for fn, key, events in (("app/fn", "b:1", ["e1", "e2"]), ("app/fn", "a", ["e3"]),
                            ("app/fn:x", "k", ["e4"]), ("app/other", "k", ["e5"])):
        tx.enqueue("batch", f"batch:{fn}:{key}", NOW + 60_000,
                   payload={"function_id": fn, "first_at": NOW - len(events)})
        for event_id in events:
            tx.add_batch_event(f"batch:{fn}:{key}", event_id)
    tx.enqueue("debounce", "debounce:app/fn:", NOW + 5_000,
               payload={"function_id": "app/fn", "first_at": NOW - 7}, event_id="e6")
    tx.enqueue("exec", "exec:app/fn:r1", NOW, run_id="r1")


async def test_held_windows_lists_a_functions_batches_then_debounces_in_key_order(
        store: Store) -> None:
    await store.write(open_windows)
    found = await store.read(lambda tx: tx.held_windows("app/fn", 100))
    assert found == [
        HeldWindow("batch", "a", NOW + 60_000, NOW - 1, 1, "e3"),
        HeldWindow("batch", "b:1", NOW + 60_000, NOW - 2, 2, "e1"),   # its oldest event
        HeldWindow("debounce", "", NOW + 5_000, NOW - 7, 1, "e6"),
    ]
    assert await store.read(lambda tx: tx.held_windows("app/fn:x", 100)) == [
        HeldWindow("batch", "k", NOW + 60_000, NOW - 1, 1, "e4")]
    assert await store.read(lambda tx: tx.held_windows("app/none", 100)) == []


async def test_held_windows_stops_at_the_limit_across_kinds(store: Store) -> None:
    await store.write(open_windows)
    assert [w.key for w in await store.read(lambda tx: tx.held_windows("app/fn", 1))] == ["a"]
    two = await store.read(lambda tx: tx.held_windows("app/fn", 2))
    assert [(w.kind, w.key) for w in two] == [("batch", "a"), ("batch", "b:1")]


async def test_held_windows_follow_the_window_until_it_fires(store: Store) -> None:
    """A debounce moved by a later event shows that event and the new due time; a batch
    taken (it fired) is gone; one written before `first_at` was recorded has no opened time."""
    await store.write(open_windows)

    def move_and_fire(tx: Tx) -> None:
        item = tx.get_item("debounce:app/fn:")
        assert item is not None and item.payload is not None
        tx.update_item(item.id, NOW + 9_000, item.payload, event_id="e7")
        batch = tx.get_item("batch:app/fn:a")
        assert batch is not None
        tx.delete_item(batch.id)
        tx.take_batch("batch:app/fn:a")
        tx.enqueue("batch", "batch:app/fn:old", NOW + 1, payload={"function_id": "app/fn"})
        tx.add_batch_event("batch:app/fn:old", "e8")

    await store.write(move_and_fire)
    found = await store.read(lambda tx: tx.held_windows("app/fn", 100))
    assert [(w.key, w.due_at, w.created_at, w.events, w.event_id) for w in found] == [
        ("b:1", NOW + 60_000, NOW - 2, 2, "e1"), ("old", NOW + 1, None, 1, "e8"),
        ("", NOW + 9_000, NOW - 7, 1, "e7")]


# --- model usage -----------------------------------------------------------------------------


async def test_model_usage_is_recorded_once_per_step_attempt_and_model(store: Store) -> None:
    rows = [UsageRow("r1", "h1", 0, "gpt-x", "ask", 100, 10, 1, NOW),
            UsageRow("r1", "h1", 1, "gpt-x", "ask", 120, 12, 1, NOW + 5),
            UsageRow("r1", "h2", 0, "claude-y", "tool", 7, 3, 2, NOW + 9),
            UsageRow("r2", "h1", 0, "gpt-x", "ask", 1, 1, 1, NOW)]
    await store.write(lambda tx: tx.insert_model_usage(rows))
    # A script run again (the same attempt) keeps the first record.
    await store.write(lambda tx: tx.insert_model_usage(
        [UsageRow("r1", "h1", 0, "gpt-x", "ask", 999, 999, 9, NOW + 50)]))
    await store.write(lambda tx: tx.insert_model_usage([]))
    assert await store.read(lambda tx: tx.run_model_usage("r1")) == rows[:3]
    assert await store.read(lambda tx: tx.run_model_usage("r2")) == rows[3:]
    assert await store.read(lambda tx: tx.run_model_usage("nobody")) == []


# --- waits -----------------------------------------------------------------------------------


def wait(run_id: str, name: str = "app/paid", **fields: Any) -> WaitRow:
    fields.setdefault("expires_at", NOW + 60)
    return WaitRow(run_id=run_id, kind=fields.pop("kind", "wait"), event_name=name, **fields)


async def test_waits_are_found_by_name_and_match_key_oldest_first(store: Store) -> None:
    rows = [
        wait("r1", step_hash="h1", match_key='data.id="o-1"', expr="async.data.ok",
             event_ctx={"name": "app/order", "data": {"id": "o-1"}}),
        wait("r2", step_hash="h2"),                                  # no match: every event
        wait("r3", step_hash="h3", match_key='data.id="o-2"'),
        wait("r4", kind="cancel", match_key='user.id=7', expires_at=None),
        wait("r5", "app/other", step_hash="h5"),
    ]
    await store.write(lambda tx: [tx.insert_wait(w) for w in rows])
    found = await store.read(lambda tx: tx.find_waits("app/paid", ['data.id="o-1"', "user.id=7"]))
    assert [w.run_id for w in found] == ["r1", "r2", "r4"]
    assert found[0].id < found[1].id < found[2].id
    first = found[0]
    assert (first.kind, first.event_name, first.step_hash, first.match_key, first.expr,
            first.event_ctx, first.expires_at) == (
        "wait", "app/paid", "h1", 'data.id="o-1"', "async.data.ok",
        {"name": "app/order", "data": {"id": "o-1"}}, NOW + 60)
    assert (found[2].kind, found[2].expires_at, found[2].step_hash) == ("cancel", None, None)
    found = await store.read(lambda tx: tx.find_waits("app/paid", []))
    assert [w.run_id for w in found] == ["r2"]
    assert await store.read(lambda tx: tx.find_waits("app/none", ["x=1"])) == []
    paths = await store.read(lambda tx: tx.match_paths("app/paid"))
    assert sorted(paths) == ["data.id", "user.id"]
    assert await store.read(lambda tx: tx.match_paths("app/other")) == []


async def test_delete_wait_is_compare_and_set(store: Store) -> None:
    await store.write(lambda tx: tx.insert_wait(wait("r1", step_hash="h1")))
    [found] = await store.read(lambda tx: tx.find_waits("app/paid", []))
    # Two events (or an event and a timeout) taking the same wait: exactly one does.
    assert await store.write(lambda tx: tx.delete_wait(found.id))
    assert not await store.write(lambda tx: tx.delete_wait(found.id))
    assert await store.read(lambda tx: tx.find_waits("app/paid", [])) == []


async def test_waits_are_deleted_per_step_and_per_run(store: Store) -> None:
    def seed(tx: Tx) -> None:
        tx.insert_wait(wait("r1", step_hash="h1"))
        tx.insert_wait(wait("r1", step_hash="h2"))
        tx.insert_wait(wait("r1", kind="cancel"))
        tx.insert_wait(wait("r2", step_hash="h1"))

    await store.write(seed)
    assert await store.write(lambda tx: tx.delete_step_wait("r1", "h1"))
    assert not await store.write(lambda tx: tx.delete_step_wait("r1", "h1"))

    async def runs() -> list[tuple[str, str | None]]:
        found = await store.read(lambda tx: tx.find_waits("app/paid", []))
        return [(w.run_id, w.step_hash) for w in found]

    assert await runs() == [("r1", "h2"), ("r1", None), ("r2", "h1")]
    await store.write(lambda tx: tx.delete_run_waits("r1"))
    assert await runs() == [("r2", "h1")]


# --- apps ------------------------------------------------------------------------------------


async def test_save_app_says_whether_the_registration_changed(store: Store) -> None:
    body = {"appName": "shop", "functions": [{"id": "f"}]}
    assert await store.write(lambda tx: tx.save_app("shop", "http://a/api", body, "c1", NOW))
    assert not await store.write(lambda tx: tx.save_app("shop", "http://b/api", body, "c1",
                                                         NOW + 1))
    assert await store.write(lambda tx: tx.save_app("bar", "http://c/api", {}, "c9", NOW))
    assert await store.read(lambda tx: tx.list_apps()) == [
        ("bar", "http://c/api", {}, "c9"), ("shop", "http://b/api", body, "c1")]
    assert await store.write(lambda tx: tx.save_app("shop", "http://b/api", {}, "c2", NOW + 2))
    assert (await store.read(lambda tx: tx.list_apps()))[1] == ("shop", "http://b/api", {}, "c2")


# --- retention -------------------------------------------------------------------------------


CUTOFF = NOW + 1_000


def seed_retention(tx: Tx) -> None:
    """Runs ended before and after the cutoff, with their steps, and events referred to in
    every way a run, a batch or a debounce can refer to one."""
    memo = Memo("h", "s", "run", 0, data=1, started_at=NOW, ended_at=NOW)
    for n, status in enumerate(("completed", "failed", "cancelled")):
        run_id = f"old-{status}"
        tx.insert_event(Event("app/e", id=f"ev-{run_id}"), NOW, NOW, True)
        tx.insert_run(RunRow(run_id, "app/fn", [f"ev-{run_id}"], NOW))
        tx.finish_run(run_id, status, NOW + 10 + n)
        tx.insert_memo(run_id, memo)
        tx.insert_step_failure(run_id, "h", "s", 0, {"m": 1}, NOW)
        tx.insert_model_usage([UsageRow(run_id, "h", 0, "m", "s", 1, 2, 1, NOW)])
        tx.insert_wait(WaitRow(run_id=run_id, kind="cancel", event_name="app/x",
                               expires_at=None))
        tx.enqueue("timeout", f"timeout:{run_id}", NOW, run_id=run_id)
    tx.insert_run(RunRow("old-skipped", "app/fn", [], NOW, status="skipped", ended_at=NOW))
    tx.insert_run(RunRow("recent", "app/fn", ["ev-recent"], NOW))
    tx.finish_run("recent", "completed", CUTOFF + 1)
    tx.insert_run(RunRow("active", "app/fn", ["ev-active"], NOW - 100))         # never ended
    tx.insert_run(RunRow("batched", "app/fn", ["ev-b1", "ev-b2"], NOW))        # still running
    for event_id in ("ev-recent", "ev-active", "ev-b1", "ev-b2", "ev-pending", "ev-debounced",
                     "ev-free-1", "ev-free-2"):
        tx.insert_event(Event("app/e", id=event_id), NOW + len(event_id), NOW, True)
    tx.insert_event(Event("app/e", id="ev-unprocessed"), NOW, NOW, False)
    tx.insert_event(Event("app/e", id="ev-new"), CUTOFF + 5, NOW, True)
    tx.add_batch_event("batch:app/fn:k", "ev-pending")
    tx.enqueue("debounce", "debounce:app/fn:k", NOW + 50,
               payload={"function_id": "app/fn", "first_at": NOW}, event_id="ev-debounced")
    tx.put_flow("rate:old", text="1", expires_at=NOW + 100)       # expired at NOW + 500
    tx.put_flow("rate:later", text="1", expires_at=NOW + 900)
    tx.put_flow("single:forever", text="x")


async def test_prune_deletes_only_what_retention_no_longer_keeps(store: Store) -> None:
    await store.write(seed_retention)
    assert await store.write(lambda tx: tx.prune(CUTOFF, NOW + 500, 100)) == (4, 5, 1)
    runs = {r.id for r in await store.read(lambda tx: tx.list_runs())}
    assert runs == {"recent", "active", "batched"}
    events = {e.id for e, _ in await store.read(lambda tx: tx.list_events(None, 100))}
    # The old runs' events went with them, and the two nothing refers to.
    assert events == {"ev-recent", "ev-active", "ev-b1", "ev-b2", "ev-pending", "ev-debounced",
                      "ev-unprocessed", "ev-new"}
    flows = await store.read(lambda tx: [tx.get_flow(k) for k in (
        "rate:old", "rate:later", "single:forever")])
    assert flows == [None, ("1", NOW + 900), ("x", None)]
    # The pruned runs' steps, waits and queue items are gone too.
    states = await store.read(lambda tx: tx.load_run_states(["old-failed"]))
    assert states == {}
    assert await store.read(lambda tx: tx.run_model_usage("old-failed")) == []
    assert await store.read(lambda tx: tx.find_waits("app/x", [])) == []
    assert await store.read(lambda tx: tx.get_item("timeout:old-failed")) is None
    assert await store.read(lambda tx: tx.get_item("debounce:app/fn:k")) is not None
    assert await store.write(lambda tx: tx.prune(CUTOFF, NOW + 500, 100)) == (0, 0, 0)


async def test_prune_deletes_at_most_limit_of_each_kind_oldest_first(store: Store) -> None:
    await store.write(seed_retention)
    assert await store.write(lambda tx: tx.prune(CUTOFF, NOW + 1_000, 1)) == (1, 1, 1)
    runs = {r.id for r in await store.read(lambda tx: tx.list_runs())}
    assert "old-skipped" not in runs and "old-completed" in runs        # ended first
    totals = [1, 1, 1]
    while True:
        counts = await store.write(lambda tx: tx.prune(CUTOFF, NOW + 1_000, 2))
        assert all(count <= 2 for count in counts)
        if counts == (0, 0, 0):
            break
        totals = [t + c for t, c in zip(totals, counts, strict=True)]
    assert totals == [4, 5, 2]


# --- group commit ----------------------------------------------------------------------------


class Boom(RuntimeError):
    pass


async def test_one_failing_script_in_a_group_fails_alone(store: Store) -> None:
    """Scripts queued together are committed in one transaction; when one raises, the group is
    rolled back and each script runs again alone: the others commit (once), and only the
    failing one gets its error."""
    started, release = threading.Event(), threading.Event()
    calls: dict[str, int] = {}
    lock = threading.Lock()

    def blocker(tx: Tx) -> None:       # holds the writer while the group is queued
        started.set()
        release.wait(30)

    def script(n: int) -> Any:
        def run(tx: Tx) -> int:
            with lock:
                calls[f"s{n}"] = calls.get(f"s{n}", 0) + 1
            tx.insert_run(RunRow(f"r{n}", "app/fn", [], NOW))
            tx.insert_memo(f"r{n}", Memo("h", "s", "run", 0, data=n, started_at=NOW,
                                         ended_at=NOW))
            if n == 2:
                raise Boom(f"script {n} failed")
            return n
        return run

    first = asyncio.ensure_future(store.write(blocker))
    await asyncio.wait_for(asyncio.to_thread(started.wait, 30), 35)
    group = [asyncio.ensure_future(store.write(script(n))) for n in range(5)]

    async def all_queued() -> None:
        while store.pending_writes() < 6:  # noqa: ASYNC110 - polling a counter, not an event
            await asyncio.sleep(0.001)

    await asyncio.wait_for(all_queued(), 30)
    release.set()
    await first
    results = await asyncio.gather(*group, return_exceptions=True)
    assert [r if not isinstance(r, Exception) else repr(r) for r in results] == [
        0, 1, repr(Boom("script 2 failed")), 3, 4]
    # They did run as one group (in order, up to the failing script), then each alone.
    assert calls == {"s0": 2, "s1": 2, "s2": 2, "s3": 1, "s4": 1}
    states = await store.read(lambda tx: tx.load_run_states([f"r{n}" for n in range(5)]))
    assert sorted(states) == ["r0", "r1", "r3", "r4"]
    assert [states[r].memos["h"].data for r in ("r0", "r1", "r3", "r4")] == [0, 1, 3, 4]
