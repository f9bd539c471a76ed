"""The storage contract for the runs list: `Tx.search_runs` (every filter, the cursor, and the
derived `doing` states in one statement) and `Tx.run_work` (what an active run waits on), on
SQLite, Postgres and Postgres-strict."""

from __future__ import annotations

from typing import Any

import pytest

from stepwell.core.models import Memo
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
