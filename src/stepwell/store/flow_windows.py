"""The SQL behind `Tx.held_windows`, shared by both backends: a function's pending batch and
debounce windows (queue items of kind `batch` / `debounce`, keyed `<kind>:<function>:<key>`).

A function's windows are the keys under the prefix `<kind>:<function>:`, read as a range of the
queue's key, which an index walks in order, so the read stops after `limit` windows whatever
else is queued. The range is compared byte-wise: SQLite's default collation is, and on Postgres
the comparison names `COLLATE "C"`, because a database created with a language collation does
not order `:` next to `;`, so the range would not be the prefix there. Function ids may hold
`:`, so a longer id can share the prefix (`fn` and `fn:x`): the item's own `function_id` (its
payload) is checked as well. The `queue_flow_windows` index (schema v21) holds the
flow-control items' keys only; the query names its condition (`kind IN (...)`) word for word,
which SQLite needs to use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from stepwell.core.config import id_for_key
from stepwell.core.queue import BATCH, DEBOUNCE
from stepwell.store.base import HeldWindow
from stepwell.store.codec import loads

KINDS: Final = (BATCH, DEBOUNCE)       # in key order, as the windows are listed

# A batch's size and oldest event: probes of `batch_events_by_key` (batch_key, seq).
_BATCHED = """(SELECT count(*) FROM batch_events b WHERE b.batch_key = q.unique_key),
  (SELECT b.event_id FROM batch_events b WHERE b.batch_key = q.unique_key ORDER BY b.seq LIMIT 1)"""
_SELECT = """SELECT q.unique_key, q.due_at, q.payload, q.event_id, {batched}
FROM queue q WHERE q.kind IN ('batch', 'debounce') AND q.kind = '{kind}'
  AND {key} >= {mark} AND {key} < {mark} AND {owner} = {mark}
ORDER BY {key} LIMIT {mark}"""


def window_sqls(*, mark: str, key: str, owner: str) -> dict[str, str]:
    """The SELECT of each kind's windows in a dialect, given its placeholder, its byte-wise
    key expression and its expression of the payload's `function_id`."""
    return {kind: _SELECT.format(kind=kind, mark=mark, key=key, owner=owner,
                                 batched=_BATCHED if kind == BATCH else "0, NULL")
            for kind in KINDS}


def prefix(kind: str, function_id: str) -> str:
    """`<kind>:<function key>:`, what every window key of the function starts with."""
    return f"{kind}:{id_for_key(function_id)}:"


def read_windows(sqls: dict[str, str], function_id: str, limit: int,
                 query: Callable[[str, tuple[Any, ...]], Sequence[Sequence[Any]]]
                 ) -> list[HeldWindow]:
    """`Tx.held_windows` over `query` (a backend's statement runner): each kind's range of
    keys (the prefix up to the prefix with its final `:` moved one byte up, to `;`), in turn,
    until `limit` windows are found."""
    found: list[HeldWindow] = []
    for kind in KINDS:
        if len(found) >= limit:
            break
        start = prefix(kind, function_id)
        rows = query(sqls[kind], (start, start[:-1] + ";", function_id, limit - len(found)))
        found += [_window(kind, len(start), row) for row in rows]
    return found


def _window(kind: str, prefix_length: int, row: Sequence[Any]) -> HeldWindow:
    unique_key, due_at, payload, event_id, batched, oldest = row
    opened = (loads(payload) or {}).get("first_at")
    created_at = None if opened is None else int(opened)
    key = unique_key[prefix_length:]
    if kind == BATCH:
        return HeldWindow(kind, key, int(due_at), created_at, int(batched), oldest)
    return HeldWindow(kind, key, int(due_at), created_at, int(event_id is not None), event_id)
