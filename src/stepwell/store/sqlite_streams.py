"""`Tx` for SQLite, durable streams (`StreamItem`; documented in store/base.py). Apart from
sqlite_tx so that module stays about the run and its queue. SQLite has one writer at a time, so
"the channel's last offset + 1" in the INSERT cannot race."""

from __future__ import annotations

import sqlite3

from stepwell.store import rows as r
from stepwell.store.base import StreamItem

_APPEND = (f"INSERT INTO stream_items ({r.names(r.STREAM)}, publish_key) "
           "SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ?, ?, ?, ? FROM stream_items "
           "WHERE channel = ? RETURNING seq")


class SqliteStreams:
    c: sqlite3.Connection

    def publish_item(self, item: StreamItem, key: str | None) -> int:
        if key is not None:
            found = self.c.execute("SELECT seq FROM stream_items WHERE publish_key=?",
                                   (key,)).fetchone()
            if found is not None:
                return int(found[0])
        channel, _, *rest = r.stream_values(item, 0)
        row = self.c.execute(_APPEND, (channel, *rest, key, channel)).fetchone()
        return int(row[0])

    def read_stream(self, channel: str, after: int, limit: int) -> list[StreamItem]:
        return [r.stream_from_row(row) for row in self.c.execute(
            f"SELECT {r.names(r.STREAM)} FROM stream_items WHERE channel=? AND seq>? "
            "ORDER BY seq LIMIT ?", (channel, after, limit))]

    def attempt_channels(self, run_id: str, step_id: str, attempt: int) -> list[str]:
        return [row[0] for row in self.c.execute(
            "SELECT DISTINCT channel FROM stream_items WHERE run_id=? AND step_id=? "
            "AND attempt=? ORDER BY channel", (run_id, step_id, attempt))]
