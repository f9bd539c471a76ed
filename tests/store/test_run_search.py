"""The storage contract for the runs list: `Tx.search_runs` (every filter, the cursor, and the
derived `doing` states in one statement) and `Tx.run_work` (what an active run waits on), on
SQLite, Postgres and Postgres-strict."""

from __future__ import annotations

from typing import Any

import pytest

from stepwell.core.models import Memo
from stepwell.store import run_search
from stepwell.store.base import RunQuery, RunRow, Store, Tx, WaitRow

pytestmark = pytest.mark.postgres_strict

NOW = 1_000_000


async def test_search_runs_filters_pages_and_derives_what_runs_are_doing(store: Store) -> None:
    def script(tx: Tx) -> None:
        for i, (run_id, fn) in enumerate([("a", "app/f"), ("b", "app/f"), ("c", "app/g"),
                                          ("d", "app/f"), ("e", "app/f"), ("f", "app/f")]):
            tx.insert_run(RunRow(run_id, fn, [f"e{i}"], NOW + i))
        tx.insert_run(RunRow("batch", "app/g", ["x1", "x2"], NOW + 10))
        for run_id in "abcdef":
            tx.start_run(run_id, NOW + 20)
        tx.insert_memo("a", Memo("h1", "nap", "sleep", 0, due_at=NOW + 100, started_at=NOW))
        tx.insert_memo("b", Memo("h1", "nap", "sleep", 0, due_at=NOW + 5, started_at=NOW))
        tx.insert_memo("c", Memo("h1", "wait", "wait", 0, due_at=NOW + 99, started_at=NOW,
                                 pending=True))
        tx.insert_memo("d", Memo("h1", "child", "invoke", 0, started_at=NOW, pending=True))
        tx.insert_step_failure("e", "h9", "charge", 0, {"message": "no"}, NOW)
        tx.insert_memo("f", Memo("h1", "one", "run", 0, data=1, started_at=NOW, ended_at=NOW))
        tx.insert_step_failure("f", "h1", "one", 0, {"message": "then ok"}, NOW)
        tx.add_run_warning("f", "orphaned: no worker defines app/f")

    await store.write(script)

    async def ids(**fields: Any) -> list[str]:
        query = RunQuery(now=NOW + 50, **fields)
        return [r.id for r in await store.read(lambda tx: tx.search_runs(query))]

    assert await ids() == ["batch", "f", "e", "d", "c", "b", "a"]
    assert await ids(function_ids=("app/g",)) == ["batch", "c"]
    assert await ids(statuses=("queued",)) == ["batch"]
    assert await ids(statuses=("queued", "running"), limit=2) == ["batch", "f"]
    assert await ids(run_id="c") == ["c"]
    assert await ids(event_id="x2") == ["batch"]            # a batch's later event
    assert await ids(event_id="e2") == ["c"]
    assert await ids(created_from=NOW + 1, created_until=NOW + 3) == ["c", "b"]
    assert await ids(before=(NOW + 3, "d")) == ["c", "b", "a"]      # the cursor: strictly older
    assert await ids(before=(NOW + 10, "batch"), limit=1) == ["f"]
    # A sleep counts until its due time; a recorded step that failed first is not retrying.
    assert await ids(doing="sleeping") == ["a"]
    assert await ids(doing="waiting") == ["c"]
    assert await ids(doing="invoking") == ["d"]
    assert await ids(doing="retrying") == ["e"]
    assert await ids(doing="orphaned") == ["f"]
    assert await ids(doing="sleeping", function_ids=("app/g",)) == []


@pytest.mark.parametrize("drive_limit", [run_search.MARKED_DRIVE_LIMIT, 2, 0],
                         ids=["from the marks", "too many marks", "walking the runs"])
async def test_doing_filters_agree_whether_read_from_marks_or_walked(
        store: Store, drive_limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A state's filter reads its marked runs (migration 0020's partial indexes) when there
    are few, else walks the running runs: the same runs, pages and cursor either way, and a
    mark that outlived its run (cancelled while asleep, waiting) or a wait since resolved
    selects nothing."""
    monkeypatch.setattr(run_search, "MARKED_DRIVE_LIMIT", drive_limit)

    def script(tx: Tx) -> None:
        for i in range(8):
            run_id = f"r{i}"
            tx.insert_run(RunRow(run_id, "app/f", [f"e{i}"], NOW + i))
            tx.start_run(run_id, NOW + 20)
            if i % 2 == 0:      # two sleeps at once (parallel): the run is listed once
                for h in ("h1", "h2"):
                    tx.insert_memo(run_id, Memo(h, "nap", "sleep", 0, due_at=NOW + 100,
                                                started_at=NOW))
            else:
                tx.insert_memo(run_id, Memo("h1", "wait", "wait", 0, due_at=NOW + 99,
                                            started_at=NOW, pending=True))
        tx.resolve_memo("r7", "h1", {"data": {"name": "ok"}}, NOW + 30)
        tx.finish_run("r6", "cancelled", NOW + 30)
        tx.finish_run("r5", "cancelled", NOW + 30)
        tx.add_run_warning("r3", "orphaned: no worker defines app/f")
        tx.add_run_warning("r6", "orphaned: no worker defines app/f")     # ended: not orphaned
        # Retrying: r2's step failed and waits for its next attempt; r4's failed, then its
        # retry recorded the memo; r0's failed and then the run ended.
        for run_id, step_hash in (("r2", "hx"), ("r4", "hy"), ("r0", "hz")):
            tx.insert_step_failure(run_id, step_hash, "charge", 0, {"message": "no"}, NOW)
        tx.insert_memo("r4", Memo("hy", "charge", "run", 2, data=1, attempts=2,
                                  started_at=NOW, ended_at=NOW))
        tx.finish_run("r0", "failed", NOW + 30)

    await store.write(script)

    async def ids(**fields: Any) -> list[str]:
        query = RunQuery(now=NOW + 50, **fields)
        return [r.id for r in await store.read(lambda tx: tx.search_runs(query))]

    assert await ids(doing="sleeping") == ["r4", "r2"]
    assert await ids(doing="sleeping", limit=1) == ["r4"]
    assert await ids(doing="sleeping", before=(NOW + 4, "r4")) == ["r2"]
    assert await ids(doing="sleeping", statuses=("running",), created_from=NOW + 3) == ["r4"]
    assert await ids(doing="retrying") == ["r2"]
    assert await ids(doing="waiting") == ["r3", "r1"]
    assert await ids(doing="waiting", function_ids=("app/g",)) == []
    assert await ids(doing="invoking") == []
    assert await ids(doing="orphaned") == ["r3"]
    # Once every sleep is due, nothing is sleeping.
    late = RunQuery(now=NOW + 100, doing="sleeping")
    assert await store.read(lambda tx: tx.search_runs(late)) == []
    # Only r2's failure still marks its run (schema v22): the retried step's and the ended
    # run's were settled in the transactions that recorded the memo and the end.
    marks = await store.read(lambda tx: tx.c.execute(
        "SELECT run_id, hash FROM step_failures WHERE unresolved IS NOT NULL").fetchall())
    assert [tuple(row) for row in marks] == [("r2", "hx")]


async def test_run_work_gives_each_runs_item_waits_and_invoked_runs(store: Store) -> None:
    def script(tx: Tx) -> None:
        tx.insert_run(RunRow("p", "app/f", ["e1"], NOW))
        tx.insert_run(RunRow("q", "app/f", ["e2"], NOW))
        tx.insert_run(RunRow("child", "app/g", ["e3"], NOW + 1, parent_run_id="p",
                             parent_step="h2"))
        tx.enqueue("exec", "exec:p", NOW + 60, run_id="p", concurrency=[("c:fn:x", 2)])
        tx.insert_wait(WaitRow(run_id="p", kind="wait", event_name="app/ok",
                               expires_at=NOW + 99, step_hash="h1", match_key="data.id=7",
                               expr="async.data.ok"))

    await store.write(script)
    work = await store.read(lambda tx: tx.run_work(["p", "q", "nope"]))
    assert set(work) == {"p", "q", "nope"}
    p = work["p"]
    assert (p.due_at, p.leased, p.blocked, p.concurrency) == (NOW + 60, False, False,
                                                             [("c:fn:x", 2)])
    [wait] = p.waits
    assert (wait.kind, wait.event_name, wait.step_hash, wait.match_key, wait.expr,
            wait.expires_at) == ("wait", "app/ok", "h1", "data.id=7", "async.data.ok", NOW + 99)
    assert p.children == [("child", "app/g", "queued", "h2")]
    assert (work["q"].due_at, work["q"].waits, work["q"].children) == (None, [], [])
    assert await store.read(lambda tx: tx.run_work([])) == {}
