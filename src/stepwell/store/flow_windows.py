"""The SQL behind `Tx.held_windows`, shared by both backends: a function's pending batch and
debounce windows (queue items of kind `batch` / `debounce`, keyed `<kind>:<function>:<key>`,
with the function's qualified id in their payload's `function_id`).

The queue has no function column, and the key alone cannot name the function: function ids may
hold `:`, so `batch:fn:x:k` is function `fn`'s key `x:k` or function `fn:x`'s key `k`. So the
`queue_flow_windows` index (schema v21) is on the payload's `function_id`, then the key, over
the flow-control items only: the read is one equality probe walked in key order (batches, then
debounces) that stops after `limit` windows, whatever else is queued. A read that filtered a
key range by the payload instead made Postgres misjudge the filter and read, then sort, all of
a function's windows (14 ms for 5,000, against about 1 ms now: bench/held_windows.py). The
payload expression is written here exactly as the index has it, which lets each backend use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stepwell.core.config import id_for_key
from stepwell.core.queue import BATCH
from stepwell.store.base import HeldWindow
from stepwell.store.codec import loads

# A batch's size and oldest event: probes of `batch_events_by_key` (batch_key, seq).
_SELECT = """SELECT q.kind, q.unique_key, q.due_at, q.payload, q.event_id,
  CASE WHEN q.kind = 'batch' THEN
    (SELECT count(*) FROM batch_events b WHERE b.batch_key = q.unique_key) ELSE 0 END,
  CASE WHEN q.kind = 'batch' THEN (SELECT b.event_id FROM batch_events b
    WHERE b.batch_key = q.unique_key ORDER BY b.seq LIMIT 1) END
FROM queue q WHERE q.kind IN ('batch', 'debounce') AND {function} = {mark}
ORDER BY q.unique_key LIMIT {mark}"""


def window_sql(*, mark: str, function: str) -> str:
    """The SELECT of a function's windows in a dialect, given its placeholder and its
    expression of the payload's `function_id` (as its `queue_flow_windows` index has it);
    arguments: the function's qualified id and the limit."""
    return _SELECT.format(mark=mark, function=function)


def read_windows(rows: Sequence[Sequence[Any]], function_id: str) -> list[HeldWindow]:
    """`Tx.held_windows`'s answer from the rows of `window_sql`."""
    return [_window(row, function_id) for row in rows]


def _window(row: Sequence[Any], function_id: str) -> HeldWindow:
    kind, unique_key, due_at, payload, event_id, batched, oldest = row
    opened = (loads(payload) or {}).get("first_at")
    created_at = None if opened is None else int(opened)
    key = unique_key[len(f"{kind}:{id_for_key(function_id)}:"):]
    if kind == BATCH:
        return HeldWindow(kind, key, int(due_at), created_at, int(batched), oldest)
    return HeldWindow(kind, key, int(due_at), created_at, int(event_id is not None), event_id)

