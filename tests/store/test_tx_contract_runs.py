"""The storage contract, part 1: events, runs and steps.

Every guarantee a `Tx` method documents (store/base.py), checked through the storage interface
alone (`Store.write` / `Store.read` scripts) on every backend: SQLite, Postgres, and Postgres
with `STEPWELL_PG_GUESS=0` (writers wait for every answer rather than guessing). A new backend
is done when this suite passes (parts 2 and 3: test_tx_contract_queue.py,
test_tx_contract_state.py; timers: test_timer_items.py; count_runs: test_run_counts.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from stepwell.core.config import FunctionSpec
from stepwell.core.models import Event, Memo
from stepwell.runtime.scripts import record_unstarted_run
from stepwell.store.base import RunRow, Store, Tx

pytestmark = pytest.mark.postgres_strict

NOW = 1_000_000


def event(event_id: str, name: str = "app/e", **data: Any) -> Event:
    return Event(name=name, data=data, id=event_id, ts=NOW - 5)


# --- events ----------------------------------------------------------------------------------


async def test_an_event_id_is_stored_once_within_the_dedupe_window(store: Store) -> None:
    assert await store.write(lambda tx: tx.insert_event(event("e1", v=1), NOW, NOW - 100, True))
    # Stored at NOW, after the new window's start (NOW + 50 - 100): nothing is written.
    assert not await store.write(
        lambda tx: tx.insert_event(event("e1", "app/other", v=2), NOW + 50, NOW - 50, False))
    [stored] = await store.read(lambda tx: tx.get_events(["e1"]))
    assert (stored.name, stored.data) == ("app/e", {"v": 1})
    assert await store.read(lambda tx: tx.list_events(None, 10)) == [(stored, NOW)]
    assert await store.read(lambda tx: tx.unprocessed_events(NOW + 100, 10)) == []


async def test_an_event_id_stored_before_the_window_is_stored_again(store: Store) -> None:
    assert await store.write(lambda tx: tx.insert_event(event("e1", v=1), NOW, NOW - 100, True))
    # Stored at NOW, not after the window's start (NOW): replaced, with its new arrival time.
    assert await store.write(
        lambda tx: tx.insert_event(event("e1", "app/other", v=2), NOW + 9, NOW, False))
    [stored] = await store.read(lambda tx: tx.get_events(["e1"]))
    assert (stored.name, stored.data) == ("app/other", {"v": 2})
    assert await store.read(lambda tx: tx.list_events(None, 10)) == [(stored, NOW + 9)]
    assert await store.read(lambda tx: tx.unprocessed_events(NOW + 100, 10)) == [stored]


async def test_an_event_round_trips_with_its_fields(store: Store) -> None:
    full = Event(name="app/e", data={"n": [1, {"x": None}], "s": "é"}, id="e1", ts=123,
                 user={"id": "u1"})
    bare = Event(name="app/e", data={}, id="e2", ts=456)

    def script(tx: Tx) -> None:
        tx.insert_event(full, NOW, NOW, processed=True)
        tx.insert_event(bare, NOW, NOW, processed=True)

    await store.write(script)
    assert await store.read(lambda tx: tx.get_events(["e1", "e2"])) == [full, bare]


async def test_event_generation_is_the_highest_stored_and_zero_by_default(
        store: Store) -> None:
    def script(tx: Tx) -> None:
        tx.insert_event(event("g0"), NOW, NOW, processed=True)
        tx.insert_event(event("g3"), NOW, NOW, processed=False, generation=3)
        tx.insert_event(event("g7"), NOW, NOW, processed=False, generation=7)

    await store.write(script)
    assert await store.read(lambda tx: tx.event_generation(["g0"])) == 0
    assert await store.read(lambda tx: tx.event_generation(["g0", "g3", "nope"])) == 3
    assert await store.read(lambda tx: tx.event_generation(["g7", "g3"])) == 7
    assert await store.read(lambda tx: tx.event_generation(["nope"])) == 0
    assert await store.read(lambda tx: tx.event_generation([])) == 0
    # Replaced past the dedupe window: the new generation is kept.
    await store.write(lambda tx: tx.insert_event(event("g7"), NOW + 5, NOW, True, generation=1))
    assert await store.read(lambda tx: tx.event_generation(["g7"])) == 1


async def test_mark_event_processed_is_compare_and_set(store: Store) -> None:
    await store.write(lambda tx: tx.insert_event(event("e1"), NOW, NOW, processed=False))
    assert await store.write(lambda tx: tx.mark_event_processed("e1"))
    assert not await store.write(lambda tx: tx.mark_event_processed("e1"))
    assert not await store.write(lambda tx: tx.mark_event_processed("nope"))
    assert await store.read(lambda tx: tx.unprocessed_events(NOW + 1, 10)) == []


async def test_unprocessed_events_are_oldest_first_before_a_time_up_to_a_limit(
        store: Store) -> None:
    def script(tx: Tx) -> None:
        tx.insert_event(event("late"), NOW + 3, NOW, processed=False)
        tx.insert_event(event("first"), NOW + 1, NOW, processed=False)
        tx.insert_event(event("second"), NOW + 2, NOW, processed=False)
        tx.insert_event(event("done"), NOW, NOW, processed=True)

    await store.write(script)
    found = await store.read(lambda tx: tx.unprocessed_events(NOW + 3, 10))
    assert [e.id for e in found] == ["first", "second"]        # received strictly before
    found = await store.read(lambda tx: tx.unprocessed_events(NOW + 3, 1))
    assert [e.id for e in found] == ["first"]


async def test_get_events_keeps_the_order_asked_and_skips_unknown_ids(store: Store) -> None:
    await store.write(lambda tx: [tx.insert_event(event(i), NOW, NOW, True) for i in "abc"])
    found = await store.read(lambda tx: tx.get_events(["c", "zz", "a"]))
    assert [e.id for e in found] == ["c", "a"]
    assert await store.read(lambda tx: tx.get_events([])) == []


async def test_list_events_is_newest_first_by_name_up_to_a_limit(store: Store) -> None:
    def script(tx: Tx) -> None:
        tx.insert_event(event("a1", "app/a"), NOW + 1, NOW, True)
        tx.insert_event(event("b1", "app/b"), NOW + 2, NOW, True)
        tx.insert_event(event("a2", "app/a"), NOW + 3, NOW, True)

    await store.write(script)
    listed = await store.read(lambda tx: tx.list_events(None, 10))
    assert [(e.id, at) for e, at in listed] == [("a2", NOW + 3), ("b1", NOW + 2),
                                                 ("a1", NOW + 1)]
    listed = await store.read(lambda tx: tx.list_events("app/a", 10))
    assert [e.id for e, _ in listed] == ["a2", "a1"]
    assert len(await store.read(lambda tx: tx.list_events(None, 2))) == 2


# --- runs ------------------------------------------------------------------------------------


async def test_a_run_round_trips_with_its_fields(store: Store) -> None:
    new = RunRow("r1", "app/fn", ["e1"], NOW, parent_run_id="p1", parent_step="h1",
                 replay_of="r0", version="code:abc")
    await store.write(lambda tx: tx.insert_run(new))
    row = await store.read(lambda tx: tx.get_run("r1"))
    assert row is not None
    assert (row.id, row.function_id, row.status, row.event_ids, row.created_at) == (
        "r1", "app/fn", "queued", ["e1"], NOW)
    assert (row.started_at, row.ended_at, row.output, row.error, row.warnings) == (
        None, None, None, None, [])
    assert (row.parent_run_id, row.parent_step, row.replay_of, row.version) == (
        "p1", "h1", "r0", "code:abc")
    assert await store.read(lambda tx: tx.get_run("nope")) is None


async def test_a_run_is_stored_as_given_ended_or_started(store: Store) -> None:
    error = {"name": "RateLimited", "message": "m", "stack": ""}

    def script(tx: Tx) -> None:
        tx.insert_run(RunRow("s", "app/fn", ["e1"], NOW, status="skipped", ended_at=NOW,
                             error=error))
        tx.insert_run(RunRow("f", "app/fn", ["e1"], NOW, status="failed", ended_at=NOW,
                             error=error))
        tx.insert_run(RunRow("r", "app/fn", ["e1"], NOW, status="running", started_at=NOW))

    await store.write(script)
    rows = {r.id: r for r in await store.read(lambda tx: tx.list_runs())}
    assert (rows["s"].status, rows["s"].ended_at, rows["s"].error) == ("skipped", NOW, error)
    assert (rows["f"].status, rows["f"].ended_at, rows["f"].error) == ("failed", NOW, error)
    assert (rows["r"].status, rows["r"].started_at, rows["r"].ended_at) == ("running", NOW, None)


async def test_a_run_created_skipped_or_failed_has_ended_when_created(store: Store) -> None:
    """The runtime's rule (above the seam): flow control's unstarted runs end at creation."""
    error = {"name": "RateLimited", "message": "m", "stack": ""}
    spec = FunctionSpec(app_id="app", id="fn", name="fn", triggers=())

    def script(tx: Tx) -> list[str]:
        return [record_unstarted_run(tx, spec, [event("e1")], NOW, status, error)
                for status in ("skipped", "failed")]

    skipped, failed = await store.write(script)
    rows = {r.id: r for r in await store.read(lambda tx: tx.list_runs())}
    assert (rows[skipped].status, rows[skipped].ended_at, rows[skipped].error) == (
        "skipped", NOW, error)
    assert (rows[failed].status, rows[failed].ended_at, rows[failed].error) == (
        "failed", NOW, error)


async def test_a_batched_run_lists_all_its_events_in_order(store: Store) -> None:
    def script(tx: Tx) -> None:
        for i in ("b", "a", "c"):
            tx.insert_event(event(i), NOW, NOW, True)
        tx.insert_run(RunRow("batch", "app/fn", ["b", "a", "c"], NOW))
        tx.insert_run(RunRow("single", "app/fn", ["a"], NOW + 1))
        tx.insert_run(RunRow("none", "app/cron", [], NOW + 2))

    await store.write(script)
    row = await store.read(lambda tx: tx.get_run("batch"))
    assert row is not None and row.event_ids == ["b", "a", "c"]
    by_event = await store.read(lambda tx: tx.list_runs(event_id="a"))
    assert [r.id for r in by_event] == ["single", "batch"]
    assert [r.id for r in await store.read(lambda tx: tx.list_runs(event_id="c"))] == ["batch"]
    state = await store.read(lambda tx: tx.load_run_state("batch"))
    assert state is not None and [e.id for e in state.events] == ["b", "a", "c"]
    none = await store.read(lambda tx: tx.get_run("none"))
    assert none is not None and none.event_ids == []


async def test_start_run_sets_started_at_once_and_only_while_active(store: Store) -> None:
    await store.write(lambda tx: tx.insert_run(RunRow("r1", "app/fn", [], NOW)))
    assert await store.write(lambda tx: tx.start_run("r1", NOW + 1))
    assert await store.write(lambda tx: tx.start_run("r1", NOW + 2))        # still running
    row = await store.read(lambda tx: tx.get_run("r1"))
    assert row is not None and (row.status, row.started_at) == ("running", NOW + 1)
    await store.write(lambda tx: tx.finish_run("r1", "completed", NOW + 3))
    assert not await store.write(lambda tx: tx.start_run("r1", NOW + 4))
    assert not await store.write(lambda tx: tx.start_run("nope", NOW + 4))
    row = await store.read(lambda tx: tx.get_run("r1"))
    assert row is not None and row.status == "completed"


async def test_finish_run_is_compare_and_set(store: Store) -> None:
    def script(tx: Tx) -> None:
        tx.insert_run(RunRow("q", "app/fn", [], NOW))
        tx.insert_run(RunRow("r", "app/fn", [], NOW, status="running", started_at=NOW))

    await store.write(script)
    assert await store.write(lambda tx: tx.finish_run("q", "cancelled", NOW + 1,
                                                      error={"name": "Cancelled"}))
    assert await store.write(lambda tx: tx.finish_run("r", "completed", NOW + 2,
                                                      output={"ok": [1]}))
    # Two workers ending the same run: only the first one changes it.
    assert not await store.write(lambda tx: tx.finish_run("r", "failed", NOW + 3,
                                                          error={"name": "Late"}))
    assert not await store.write(lambda tx: tx.finish_run("nope", "failed", NOW + 3))
    rows = {r.id: r for r in await store.read(lambda tx: tx.list_runs())}
    assert (rows["q"].status, rows["q"].ended_at, rows["q"].error, rows["q"].output) == (
        "cancelled", NOW + 1, {"name": "Cancelled"}, None)
    assert (rows["r"].status, rows["r"].ended_at, rows["r"].output, rows["r"].error) == (
        "completed", NOW + 2, {"ok": [1]}, None)


async def test_a_warning_is_added_once(store: Store) -> None:
    await store.write(lambda tx: tx.insert_run(RunRow("r1", "app/fn", [], NOW)))
    for text in ("w1", "w2", "w1"):
        await store.write(lambda tx, text=text: tx.add_run_warning("r1", text))
    await store.write(lambda tx: tx.add_run_warning("nope", "w"))       # no run: nothing
    row = await store.read(lambda tx: tx.get_run("r1"))
    assert row is not None and row.warnings == ["w1", "w2"]
    assert await store.read(lambda tx: tx.get_run("nope")) is None


async def test_list_runs_is_newest_first_filtered_and_limited(store: Store) -> None:
    def script(tx: Tx) -> None:
        tx.insert_run(RunRow("a", "app/f", ["e1"], NOW))
        tx.insert_run(RunRow("c", "app/f", ["e1"], NOW + 1))
        tx.insert_run(RunRow("b", "app/f", ["e2"], NOW + 1))
        tx.insert_run(RunRow("d", "app/g", ["e1"], NOW + 2, status="skipped"))

    await store.write(script)

    async def ids(**filters: Any) -> list[str]:
        return [r.id for r in await store.read(lambda tx: tx.list_runs(**filters))]

    assert await ids() == ["d", "c", "b", "a"]          # created_at, then id, descending
    assert await ids(function_id="app/f") == ["c", "b", "a"]
    assert await ids(status="skipped") == ["d"]
    assert await ids(event_id="e1") == ["d", "c", "a"]
    assert await ids(event_id="e1", function_id="app/f", status="queued") == ["c", "a"]
    assert await ids(limit=2) == ["d", "c"]
    assert await ids(event_id="e1", limit=1) == ["d"]


async def test_load_run_states_returns_each_run_found_with_events_memos_and_failures(
        store: Store) -> None:
    done = Memo("h1", "one", "run", 0, data={"x": 1}, fingerprint="f", attempts=2,
                started_at=NOW, ended_at=NOW + 1)
    nothing = Memo("h2", "two", "run", 1, data=None, started_at=NOW, ended_at=NOW)
    failed = Memo("h3", "three", "run", 2, error={"name": "E", "message": "m"},
                  started_at=NOW, ended_at=NOW)
    waiting = Memo("h4", "four", "wait", 3, due_at=NOW + 60, started_at=NOW, pending=True)
    sleep = Memo("h5", "five", "sleep", 4, due_at=NOW + 9, started_at=NOW, ended_at=NOW + 9)

    def script(tx: Tx) -> None:
        tx.insert_event(event("e1", v=1), NOW, NOW, True)
        tx.insert_run(RunRow("r1", "app/fn", ["e1"], NOW))
        tx.insert_run(RunRow("r2", "app/fn", ["gone"], NOW))
        for memo in (done, nothing, failed, waiting, sleep):
            tx.insert_memo("r1", memo)
        for attempt in (1, 0):
            tx.insert_step_failure("r1", "h1", "one", attempt, {"n": attempt}, NOW + attempt)
        tx.insert_step_failure("r1", "h3", "three", 0, {"n": 9}, NOW)

    await store.write(script)
    states = await store.read(lambda tx: tx.load_run_states(["r1", "r2", "nope"]))
    assert set(states) == {"r1", "r2"}                       # ids not found are absent
    r1 = states["r1"]
    assert r1.run.id == "r1" and r1.events == [event("e1", v=1)]
    assert r1.memos == {m.hash: m for m in (done, nothing, failed, waiting, sleep)}
    assert r1.memos["h4"].pending and r1.memos["h4"].data is None
    assert not r1.memos["h2"].pending
    assert r1.failures == {
        "h1": [{"attempt": 0, "error": {"n": 0}, "at": NOW, "step_id": "one"},
               {"attempt": 1, "error": {"n": 1}, "at": NOW + 1, "step_id": "one"}],
        "h3": [{"attempt": 0, "error": {"n": 9}, "at": NOW, "step_id": "three"}]}
    r2 = states["r2"]
    assert (r2.events, r2.memos, r2.failures) == ([], {}, {})   # its event is gone
    assert await store.read(lambda tx: tx.load_run_states([])) == {}
    one = await store.read(lambda tx: tx.load_run_state("r1"))
    assert one is not None and one.memos == r1.memos and one.failures == r1.failures
    assert await store.read(lambda tx: tx.load_run_state("nope")) is None


# --- steps -----------------------------------------------------------------------------------


async def test_a_memo_is_inserted_once_and_never_overwritten(store: Store) -> None:
    first = Memo("h1", "one", "run", 0, data="first", started_at=NOW, ended_at=NOW)
    second = Memo("h1", "one", "run", 0, data="second", started_at=NOW, ended_at=NOW + 5)
    await store.write(lambda tx: [tx.insert_run(RunRow(r, "app/fn", [], NOW)) for r in "12"])
    assert await store.write(lambda tx: tx.insert_memo("1", first))
    # A second worker committing the same step (it lost the lease meanwhile): refused.
    assert not await store.write(lambda tx: tx.insert_memo("1", second))
    both = await store.write(lambda tx: (tx.insert_memo("1", second),
                                         tx.insert_memo("2", second)))
    assert both == (False, True)                         # per run
    state = await store.read(lambda tx: tx.load_run_state("1"))
    assert state is not None and state.memos["h1"].data == "first"


async def test_resolve_memo_is_compare_and_set_on_a_pending_memo(store: Store) -> None:
    def script(tx: Tx) -> None:
        tx.insert_run(RunRow("r1", "app/fn", [], NOW))
        tx.insert_memo("r1", Memo("w", "wait", "wait", 0, due_at=NOW + 60, started_at=NOW,
                                  pending=True))
        tx.insert_memo("r1", Memo("i", "invoke", "invoke", 1, started_at=NOW, pending=True))
        tx.insert_memo("r1", Memo("d", "done", "run", 2, data=1, started_at=NOW,
                                  ended_at=NOW))

    await store.write(script)
    # An event and the timeout racing for the same wait: exactly one wins.
    assert await store.write(lambda tx: tx.resolve_memo("r1", "w", {"data": {"e": 1}}, NOW + 1))
    assert not await store.write(lambda tx: tx.resolve_memo("r1", "w", {"data": None}, NOW + 2))
    assert await store.write(lambda tx: tx.resolve_memo("r1", "i", {"error": {"name": "T"}},
                                                        NOW + 3))
    assert not await store.write(lambda tx: tx.resolve_memo("r1", "d", {"data": 2}, NOW + 4))
    assert not await store.write(lambda tx: tx.resolve_memo("r1", "nope", {"data": 2}, NOW))
    state = await store.read(lambda tx: tx.load_run_state("r1"))
    assert state is not None
    wait, invoke, ran = state.memos["w"], state.memos["i"], state.memos["d"]
    assert (wait.pending, wait.data, wait.error, wait.ended_at, wait.due_at) == (
        False, {"e": 1}, None, NOW + 1, NOW + 60)
    assert (invoke.pending, invoke.data, invoke.error, invoke.ended_at) == (
        False, None, {"name": "T"}, NOW + 3)
    assert (ran.data, ran.ended_at) == (1, NOW)


async def test_a_step_failure_is_recorded_once_per_attempt(store: Store) -> None:
    await store.write(lambda tx: tx.insert_run(RunRow("r1", "app/fn", [], NOW)))
    for message in ("first", "again"):
        await store.write(lambda tx, m=message: tx.insert_step_failure(
            "r1", "h1", "one", 0, {"message": m}, NOW))
    state = await store.read(lambda tx: tx.load_run_state("r1"))
    assert state is not None
    assert state.failures == {"h1": [{"attempt": 0, "error": {"message": "first"}, "at": NOW,
                                      "step_id": "one"}]}


async def test_active_versions_group_unfinished_runs_by_function_and_version(
        store: Store) -> None:
    def fill(tx: Tx) -> None:
        tx.insert_run(RunRow("a1", "app/f", ["e1"], NOW + 5, version="v1"))
        tx.insert_run(RunRow("a2", "app/f", ["e2"], NOW + 1, version="v1"))
        tx.insert_run(RunRow("a3", "app/f", ["e3"], NOW + 2, version="v2"))
        tx.insert_run(RunRow("a4", "app/f", ["e4"], NOW + 3))               # no version
        tx.insert_run(RunRow("b1", "app/g", ["e5"], NOW, version="v1"))
        tx.insert_run(RunRow("done", "app/f", ["e6"], NOW, version="v0"))
        tx.finish_run("done", "completed", NOW + 9)

    await store.write(fill)
    rows = await store.read(lambda tx: tx.active_versions())
    assert sorted(rows, key=lambda r: (r[0], r[1] or "")) == [
        ("app/f", None, 1, NOW + 3), ("app/f", "v1", 2, NOW + 1), ("app/f", "v2", 1, NOW + 2),
        ("app/g", "v1", 1, NOW)]
