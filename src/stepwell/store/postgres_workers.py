"""`Tx` for Postgres, the worker registry and versioned claims (`WorkerRow`, `ClaimVersions`):
kept apart from `postgres_tx` so the queue's hot SQL there stays short; the claim takes its one
extra condition from `version_filter` here, and only for a versioned worker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stepwell.store.base import ClaimVersions, WorkerRow
from stepwell.store.postgres_sql import Pipe

_WORKER_COLUMNS = "id, app_id, version, host, pid, started_at, heartbeat_at"
_KEY = "v.function_id || chr(31) || v.version"


def version_filter(versions: ClaimVersions | None) -> tuple[str, tuple[Any, ...]]:
    """The claim's extra condition for a versioned worker: an exec item is claimable if its run
    has no version or its (function, version) is allowed (`ClaimVersions`), judged by one
    primary-key lookup of the run per candidate. None (an unversioned worker): no condition,
    the claim's SQL is exactly what it was before versions."""
    if versions is None:
        return "", ()
    if not versions.adopt:
        return (" AND (kind <> 'exec' OR (SELECT v.version IS NULL "
                f"OR {_KEY} = ANY(%s::text[]) FROM runs v WHERE v.id = queue.run_id) "
                "IS NOT FALSE)", (versions.own_keys(),))
    return (" AND (kind <> 'exec' OR (SELECT v.version IS NULL "
            f"OR {_KEY} = ANY(%s::text[]) OR ({_KEY} = ANY(%s::text[]) "
            "AND v.id <> ALL(%s::text[])) FROM runs v WHERE v.id = queue.run_id) IS NOT FALSE)",
            (versions.own_keys(), versions.adopt_keys(), list(versions.refused)))


class WorkersTx(Pipe):
    """The registry's and the run version's `Tx` methods (documented in store/base.py)."""

    def move_run_version(self, run_id: str, old: str | None, new: str) -> bool:
        return self._count(
            "UPDATE runs SET version=%s WHERE id=%s AND version IS NOT DISTINCT FROM %s "
            "AND status IN ('queued', 'running')", (new, run_id, old)) == 1

    def register_workers(self, rows: Sequence[WorkerRow]) -> None:
        for row in rows:
            self._send(
                f"INSERT INTO workers ({_WORKER_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (id, app_id, version) DO UPDATE SET host=excluded.host, "
                "pid=excluded.pid, started_at=excluded.started_at, "
                "heartbeat_at=excluded.heartbeat_at",
                (row.id, row.app_id, row.version, row.host, row.pid, row.started_at,
                 row.heartbeat_at))

    def heartbeat_worker(self, worker_id: str, now: int) -> int:
        return self._count("UPDATE workers SET heartbeat_at=%s WHERE id=%s", (now, worker_id))

    def remove_workers(self, worker_ids: Sequence[str]) -> int:
        return self._count("DELETE FROM workers WHERE id = ANY(%s)", (list(worker_ids),))

    def expire_workers(self, heartbeat_before: int) -> int:
        return self._count("DELETE FROM workers WHERE heartbeat_at < %s", (heartbeat_before,))

    def list_workers(self) -> list[WorkerRow]:
        rows = self._rows(f"SELECT {_WORKER_COLUMNS} FROM workers "
                          "ORDER BY app_id, version, started_at, id", tables=("workers",))
        return [WorkerRow(*row) for row in rows]
