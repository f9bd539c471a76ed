"""`send_in_transaction`: events written in the view's own database transaction (an outbox).

When stepwell's database *is* one of the project's databases (the same Postgres database, or
the same SQLite file: `STEPWELL["DB"]` pointing at it), an event can be stored through Django's
own connection, in the transaction that holds the view's writes. The event then exists exactly
when those writes do: committed together, rolled back together, and nothing lost if the process
dies at any point. It is stored unrouted, with a routing item in stepwell's queue (the same rows
a process without functions writes, `admission.defer_events`), and a worker routes it once the
transaction has committed; on Postgres the wake-up (NOTIFY) is delivered at commit too.

This module writes stepwell's tables through the store's own transaction classes, over Django's
connection, so it is the one place above the store that imports it (see the import contracts).
"""

from __future__ import annotations

from typing import Any

from stepwell.core.config import ConfigError
from stepwell.core.models import normalize_send
from stepwell.runtime import admission
from stepwell.runtime.clock import wall_ms
from stepwell.runtime.scripts import new_id
from stepwell.store.base import Tx


class _OneByOne:
    """Stands in for a psycopg pipeline: statements run one by one on Django's connection
    (Django's cursors bind parameters client-side, which pipeline mode does not support)."""

    def sync(self) -> None:
        return None


def _tx(vendor: str, raw: Any) -> Tx:
    if vendor == "sqlite":
        from stepwell.store.sqlite_tx import SqliteTx

        return SqliteTx(raw)
    if vendor == "postgresql":
        from stepwell.store.postgres_tx import PostgresTx

        return PostgresTx(raw, _OneByOne(), writable=True)  # type: ignore[arg-type]
    raise ConfigError(f"send_in_transaction needs stepwell's database to be a PostgreSQL or "
                      f"SQLite database of the project; this one is {vendor}")


def send_in_transaction(*args: Any, using: str = "default") -> str | list[str]:
    """Store events in the current transaction of Django database `using`, which must be
    stepwell's database (`STEPWELL["DB"]`, migrated by stepwell: start a worker once first).
    Returns the id(s). Inside `transaction.atomic()` the events commit or roll back with the
    view's writes; outside one, they are stored at once."""
    from django.db import connections

    single, events = normalize_send(args)
    now = wall_ms()
    for event in events:
        event.id = event.id or new_id()
        event.ts = event.ts or now
    connection = connections[using]
    with connection.cursor() as cursor:
        tables = connection.introspection.table_names(cursor)
        if "events" not in tables or "queue" not in tables:
            raise ConfigError(
                f"database '{using}' has no stepwell tables: send_in_transaction needs "
                "STEPWELL['DB'] to be this database, migrated by stepwell (start "
                "`manage.py stepwell worker` once)")
        admission.defer_events(_tx(connection.vendor, connection.connection), events, now)
        if connection.vendor == "postgresql":
            from stepwell.store.postgres_sql import WORK_CHANNEL

            cursor.execute("SELECT pg_notify(%s, '')", [WORK_CHANNEL])
    ids = [e.id for e in events]
    return ids[0] if single else ids
