"""`Tx` for Postgres, durable streams (`StreamItem`; documented in store/base.py). Apart from
postgres_tx so the queue's hot SQL there stays short. Offsets are "the channel's last + 1":
a transaction-scoped advisory lock on the channel makes concurrent publishers (other processes)
take turns, so no two items get one offset."""

from __future__ import annotations

from stepwell.store import rows as r
from stepwell.store.base import StreamItem
from stepwell.store.postgres_sql import Pipe

_TABLES = ("stream_items",)
_APPEND = (f"INSERT INTO stream_items ({r.names(r.STREAM)}, publish_key) "
           "SELECT %s::text, COALESCE(MAX(seq), 0) + 1, %s::text, %s::text, %s::text, %s::text, "
           "%s::int, %s::bigint, %s::text FROM stream_items WHERE channel = %s::text RETURNING seq")


class StreamsTx(Pipe):
    def publish_item(self, item: StreamItem, key: str | None) -> int:
        channel, _, *rest = r.stream_values(item, 0)
        self._send("SELECT pg_advisory_xact_lock(hashtextextended('stream:' || %s, 0))",
                   (channel,), tables=_TABLES)
        if key is not None:
            found = self._one("SELECT seq FROM stream_items WHERE publish_key=%s", (key,),
                              tables=_TABLES)
            if found is not None:
                return int(found[0])
        row = self._one(_APPEND, (channel, *rest, key, channel), tables=_TABLES)
        assert row is not None
        return int(row[0])

    def read_stream(self, channel: str, after: int, limit: int) -> list[StreamItem]:
        return [r.stream_from_row(row) for row in self._rows(
            f"SELECT {r.names(r.STREAM)} FROM stream_items WHERE channel=%s AND seq>%s "
            "ORDER BY seq LIMIT %s", (channel, after, limit), tables=_TABLES)]

    def attempt_channels(self, run_id: str, step_id: str, attempt: int) -> list[str]:
        return [row[0] for row in self._rows(
            "SELECT DISTINCT channel FROM stream_items WHERE run_id=%s AND step_id=%s "
            "AND attempt=%s ORDER BY channel", (run_id, step_id, attempt), tables=_TABLES)]
