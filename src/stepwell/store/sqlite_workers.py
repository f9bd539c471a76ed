"""`Tx` for SQLite, the worker registry and versioned claims (`WorkerRow`, `ClaimVersions`), as
`postgres_workers` for Postgres: kept apart from `sqlite_tx` so that module stays about the
run and its queue; the claim takes its one extra condition from `version_filter` here, and
only for a versioned worker."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from stepwell.store.base import ClaimVersions, WorkerRow


class SqliteWorkers:
    c: sqlite3.Connection

    def active_versions(self) -> list[tuple[str, str | None, int, int]]:
        rows = self.c.execute(
            "SELECT function_id, version, count(*), min(created_at) FROM runs "
            "WHERE status IN ('queued', 'running') GROUP BY function_id, version "
            "ORDER BY function_id, version").fetchall()
        return [(r[0], r[1], int(r[2]), int(r[3])) for r in rows]

    def move_run_version(self, run_id: str, old: str | None, new: str) -> bool:
        return self.c.execute(
            "UPDATE runs SET version=? WHERE id=? AND version IS ? "
            "AND status IN ('queued', 'running')", (new, run_id, old)).rowcount == 1

    def register_workers(self, rows: Sequence[WorkerRow]) -> None:
        self.c.executemany(
            f"INSERT OR REPLACE INTO workers ({_WORKER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [_worker_values(row) for row in rows])

    def heartbeat_worker(self, worker_id: str, now: int) -> int:
        return self.c.execute("UPDATE workers SET heartbeat_at=? WHERE id=?",
                              (now, worker_id)).rowcount

    def remove_workers(self, worker_ids: Sequence[str]) -> int:
        return self.c.execute("DELETE FROM workers WHERE id IN (SELECT value FROM json_each(?))",
                              (json.dumps(list(worker_ids)),)).rowcount

    def expire_workers(self, heartbeat_before: int) -> int:
        return self.c.execute("DELETE FROM workers WHERE heartbeat_at < ?",
                              (heartbeat_before,)).rowcount

    def list_workers(self) -> list[WorkerRow]:
        rows = self.c.execute(f"SELECT {_WORKER_COLUMNS} FROM workers "
                              "ORDER BY app_id, version, started_at, id").fetchall()
        return [WorkerRow(*row) for row in rows]


_WORKER_COLUMNS = "id, app_id, version, host, pid, started_at, heartbeat_at"


def _worker_values(row: WorkerRow) -> tuple[Any, ...]:
    return (row.id, row.app_id, row.version, row.host, row.pid, row.started_at,
            row.heartbeat_at)


def version_filter(versions: ClaimVersions | None) -> tuple[str, tuple[Any, ...]]:
    """The claim's extra condition for a versioned worker (`ClaimVersions`): an exec item is
    claimable if its run has no version or its (function, version) is allowed
    (`ClaimVersions`; one primary-key lookup of the run per candidate). None: no
    condition, the SQL of an unversioned worker is unchanged."""
    if versions is None:
        return "", ()
    # Placeholders, not json_each: the list is parsed once per statement, not per candidate.
    own, adopt, refused = versions.own_keys(), versions.adopt_keys(), list(versions.refused)
    key = "v.function_id || char(31) || v.version"
    adopting = (f" OR ({key} IN ({_marks(len(adopt))}) AND v.id NOT IN "
                f"({_marks(len(refused))}))") if adopt else ""
    return (f" AND (kind <> 'exec' OR (SELECT v.version IS NULL OR {key} IN "
            f"({_marks(len(own))}){adopting} FROM runs v WHERE v.id = queue.run_id) IS NOT 0)",
            (*own, *adopt, *refused) if adopt else tuple(own))


def _marks(n: int) -> str:
    return ", ".join("?" * n)
