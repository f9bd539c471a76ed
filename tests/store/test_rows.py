"""The codec (store/rows.py) alone: every conversion round-trips, so both backends, which store
exactly what it encodes, read back what they were given (the contract suite checks that through
real databases)."""

from __future__ import annotations

import pytest

from stepwell.core.models import Event, Memo
from stepwell.store import rows
from stepwell.store.base import RunRow, WaitRow
from stepwell.store.codec import dumps


@pytest.mark.parametrize("event_ids", [[], ["e1"], ["e2", "e1", "e3"]])
def test_a_run_round_trips_through_its_row(event_ids: list[str]) -> None:
    run = RunRow("r1", "app/fn", event_ids, 5, status="failed", started_at=6, ended_at=7,
                 output={"x": [1]}, error={"name": "E", "message": "m"}, warnings=["w"],
                 parent_run_id="p", parent_step="h", replay_of="r0", version="v1")
    values = rows.run_values(run)
    assert len(values) == len(rows.RUNS) == rows.RUN_WIDTH
    assert rows.run_from_row(values) == run
    # One event: in event_id only; several: the list too (run_events finds them).
    assert values[3:5] == ((event_ids[0] if event_ids else None),
                           (dumps(event_ids) if len(event_ids) > 1 else None))


@pytest.mark.parametrize("memo", [
    Memo("h", "s", "run", 0, data={"a": 1}, started_at=1, ended_at=2),
    Memo("h", "s", "run", 1, data=None, started_at=1, ended_at=2),
    Memo("h", "s", "invoke", 2, error={"name": "E"}, attempts=3),
    Memo("h", "s", "wait", 3, pending=True),
    Memo("h", "s", "sleep", 4, due_at=99, fingerprint="f"),
])
def test_a_memo_round_trips_with_its_outcome_wrapper(memo: Memo) -> None:
    values = rows.memo_values("r1", memo)
    assert len(values) == len(rows.MEMOS)
    assert rows.memo_from_row(values[1:]) == memo
    assert rows.outcome(memo) == (None if memo.pending else rows.resolved(
        data=memo.data, error=memo.error))


def test_events_waits_and_failures_round_trip() -> None:
    event = Event("app/e", {"k": 1}, id="e1", ts=3, user={"u": 2})
    values = rows.event_values(event, 9, True, 4)
    assert len(values) == len(rows.events_table("user")) and values[5:] == (9, True, 4)
    assert rows.event_values(event, 9, True)[7] == 0          # events from outside: generation 0
    assert rows.event_from_row(values) == event
    wait = WaitRow(run_id="r", kind="wait", event_name="app/e", expires_at=5, step_hash="h",
                   match_key="data.k=1", expr="x", event_ctx={"name": "a"}, id=4)
    assert rows.wait_from_row((4, *rows.wait_values(wait))) == wait
    failure = rows.failure_values("r", "h", "s", 2, {"name": "E"}, 7)
    assert rows.failure_from_row((failure[1], failure[3], failure[4], failure[5], failure[2])
                                 ) == ("h", {"attempt": 2, "error": {"name": "E"}, "at": 7,
                                             "step_id": "s"})


def test_concurrency_keys_pack_into_two_column_pairs() -> None:
    assert rows.pack_concurrency([]) == (None, None, None, None)
    assert rows.pack_concurrency([("a", 1)]) == ("a", 1, None, None)
    assert rows.pack_concurrency([("a", 1), ("b", 2)]) == ("a", 1, "b", 2)
    assert rows.unpack_concurrency("a", 1, "b", 2) == [("a", 1), ("b", 2)]
    assert rows.unpack_concurrency(None, None, None, None) == []
    with pytest.raises(ValueError, match="at most 2"):
        rows.pack_concurrency([("a", 1), ("b", 2), ("c", 3)])
    values = rows.queue_values("exec", "exec:r", 5, "r", {"p": 1}, "w", 9, None, [("a", 1)],
                               "e1")
    assert len(values) == len(rows.QUEUE)
    item = rows.item_from_row((7, "exec", "exec:r", 5, "r", values[4], values[7], *values[8:12],
                               "w", "e1"))
    assert (item.id, item.payload, item.priority_at, item.concurrency, item.owner,
            item.event_id) == (7, {"p": 1}, 5, [("a", 1)], "w", "e1")
