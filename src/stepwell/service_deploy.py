"""The deploy check: replay recorded runs against the code about to be deployed.

`stepwell check APP --db URL` reads every unfinished run (and a sample of finished ones) of the
app's functions from the database; `--histories DIR` reads exported history files instead, so
CI can run the check without production access. Each history is replayed in this process
against the new code with no side effects (`runtime.history`): no step body is called, each
recorded step returns its recorded result. The report says, per function, how many runs replay
cleanly, and for each divergence the run, the step, what the history has, what the code does
now and the fix. Unfinished runs are the ones a deploy affects: a divergence there (or an
unfinished run of a function the code no longer has) fails the check.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepwell.core.models import ACTIVE_STATUSES, TERMINAL_STATUSES
from stepwell.runtime.determinism import Divergence
from stepwell.runtime.history import History, HistoryError, read_history, replay_history
from stepwell.runtime.worker import Worker
from stepwell.sdk.app import App, Function
from stepwell.service_views import iso
from stepwell.store import open_store
from stepwell.store.base import RunState, Tx, WorkerRow
from stepwell.store.sqlite import sqlite_path

__all__ = ["CheckReport", "HistoryError", "check_database", "check_histories", "export_history",
           "read_folder", "versions"]
LOAD_CHUNK = 500           # run states read per transaction


@dataclass(slots=True)
class FunctionReport:
    """What the check found for one function."""

    function_id: str
    unfinished: int = 0
    unfinished_clean: int = 0
    finished: int = 0
    finished_clean: int = 0
    divergences: list[tuple[str, bool, Divergence]] = field(default_factory=list)

    def add(self, run_id: str, finished: bool, divergence: Divergence | None) -> None:
        if finished:
            self.finished += 1
            self.finished_clean += divergence is None
        else:
            self.unfinished += 1
            self.unfinished_clean += divergence is None
        if divergence is not None:
            self.divergences.append((run_id, finished, divergence))


@dataclass(slots=True)
class CheckReport:
    """The whole check: per function, plus unfinished runs of functions the code lacks."""

    functions: dict[str, FunctionReport] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)     # function id -> unfinished runs
    histories: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the deploy is safe for the runs in flight."""
        return not self.missing and all(
            f.unfinished_clean == f.unfinished for f in self.functions.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "histories": self.histories, "seconds": round(self.seconds, 3),
            "missing_functions": self.missing,
            "functions": [{
                "function_id": f.function_id, "unfinished": f.unfinished,
                "unfinished_clean": f.unfinished_clean, "finished": f.finished,
                "finished_clean": f.finished_clean,
                "divergences": [{"run_id": run_id, "finished": finished, "kind": d.kind,
                                 "step": d.step_id, "recorded": d.recorded, "now": d.now,
                                 "fix": d.fix, "message": d.message}
                                for run_id, finished, d in f.divergences]}
                for f in self.functions.values()],
        }

    def text(self, *, limit: int = 20) -> str:
        lines = []
        for f in self.functions.values():
            lines.append(f"{f.function_id}: {f.unfinished_clean}/{f.unfinished} unfinished "
                         f"runs replay cleanly; {f.finished_clean}/{f.finished} finished runs")
            for run_id, finished, d in f.divergences[:limit]:
                lines.append(f"  {'finished' if finished else 'unfinished'} run {run_id}, "
                             f"step '{d.step_id}' ({d.kind}): history has {d.recorded}; "
                             f"the code: {d.now}\n    fix: {d.fix}")
            if len(f.divergences) > limit:
                lines.append(f"  ... and {len(f.divergences) - limit} more (--json lists all)")
        for function_id, count in self.missing.items():
            lines.append(f"{function_id}: {count} unfinished run(s), but the code has no such "
                         "function (renamed or deleted): they would stop where they are; keep "
                         "the function until they finish, or cancel them")
        if not self.histories:
            lines.append("no recorded runs were found: nothing to check (is this the "
                         "deployment's database?)")
        verdict = "OK: safe to deploy" if self.ok else "FAILED: unfinished runs would diverge"
        lines.append(f"{verdict} ({self.histories} histories checked in {self.seconds:.2f} s)")
        return "\n".join(lines)


def _functions(apps: Sequence[App]) -> dict[str, Function]:
    return {fn.qualified_id: fn for app in apps for fn in app.functions.values()}


async def check_histories(apps: Sequence[App], histories: Iterable[History]) -> CheckReport:
    """Replay each history against the apps' code (see the module docstring)."""
    functions = _functions(apps)
    report = CheckReport(functions={fid: FunctionReport(fid) for fid in functions})
    started = time.perf_counter()
    with ThreadPoolExecutor(4, thread_name_prefix="stepwell-check") as pool:
        for history in histories:
            report.histories += 1
            fn = functions.get(history.function_id)
            if fn is None:
                if not history.finished:
                    report.missing[history.function_id] = (
                        report.missing.get(history.function_id, 0) + 1)
                continue
            replayed = await replay_history(fn, history, pool)
            report.functions[fn.qualified_id].add(history.run_id, history.finished,
                                                  replayed.divergence)
    report.seconds = time.perf_counter() - started
    return report


def read_folder(folder: str | Path) -> list[History]:
    """Every `*.json` history under `folder` (HistoryError names a bad file)."""
    root = Path(folder)
    if not root.is_dir():
        raise HistoryError(f"{root}: not a folder of exported histories")
    return [read_history(path) for path in sorted(root.rglob("*.json"))]


async def load_histories(db_url: str, *, sample: int = 100,
                         function_ids: Sequence[str] | None = None) -> list[History]:
    """Every unfinished run's history in the database, and up to `sample` finished ones (the
    newest) of each function named or with unfinished runs."""
    store = open_store(db_url)
    await store.open()
    try:
        def ids(tx: Tx) -> list[str]:
            wanted: list[str] = []
            active = {row.function_id for status in ACTIVE_STATUSES
                      for row in tx.list_runs(status=status, limit=1_000_000)}
            functions = sorted(active | set(function_ids or ()))
            for fid in functions:
                for status in ACTIVE_STATUSES:
                    wanted += [r.id for r in tx.list_runs(function_id=fid, status=status,
                                                          limit=1_000_000)]
                if sample > 0:
                    finished = [r for status in TERMINAL_STATUSES
                                for r in tx.list_runs(function_id=fid, status=status,
                                                      limit=sample)]
                    finished.sort(key=lambda r: r.created_at, reverse=True)
                    wanted += [r.id for r in finished[:sample]]
            return wanted

        run_ids = await store.read(ids)
        histories: list[History] = []
        for start in range(0, len(run_ids), LOAD_CHUNK):
            chunk = run_ids[start:start + LOAD_CHUNK]
            states = await store.read(functools.partial(_states, run_ids=chunk))
            histories += [History.from_state(states[i]) for i in chunk if i in states]
        return histories
    finally:
        await store.close()


async def export_history(worker: Worker, run_id: str) -> dict[str, Any] | None:
    """`GET /v1/runs/{id}/history`: the run's history as JSON, or None for an unknown run."""
    state = await worker.read(functools.partial(_state, run_id=run_id))
    return None if state is None else History.from_state(state).to_json()


async def versions(worker: Worker) -> list[dict[str, Any]]:
    """`GET /v1/versions`: per function, the version its code has here now and, per version,
    its unfinished runs (how many, the oldest) and the live workers serving it (the worker
    registry: id, host, pid, started, last heartbeat), so an operator sees old versions drain.
    A version's `state`: `current` (this code's), `draining` (older, with runs and live
    workers), `stranded` (runs but no live worker: pinned runs wait for one, `upgrade="auto"`
    runs move once a newer worker's replay check passes), `drained` (no unfinished run; its
    workers may be stopped). A version with workers but no run is listed when it is this
    code's or an explicit (app-wide) one; one with neither is absent."""
    rows, registered = await worker.read(_active_versions)
    functions = dict(worker.registry.items())
    out: dict[str, dict[str, Any]] = {
        qid: {"function_id": fn.spec.public_id, "current": fn.spec.version, "versions": []}
        for qid, fn in sorted(functions.items())}
    serving: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in registered:
        serving.setdefault((row.app_id, row.version), []).append({
            "id": row.id, "host": row.host, "pid": row.pid, "started_at": iso(row.started_at),
            "heartbeat_at": iso(row.heartbeat_at)})
    for function_id, version, count, oldest in rows:
        entry = out.setdefault(function_id, {"function_id": function_id, "current": None,
                                             "versions": [], "defined": False})
        entry["versions"].append({"version": version, "runs": count, "oldest": iso(oldest)})
    for qid, entry in out.items():
        app_id = qid.split("/", 1)[0]
        listed = {v["version"] for v in entry["versions"]}
        for app, version in sorted(serving):
            if app == app_id and version not in listed and (
                    version == entry["current"] or not version.startswith("code:")):
                entry["versions"].append({"version": version, "runs": 0, "oldest": None})
        for v in entry["versions"]:
            v["current"] = v["version"] == entry["current"]
            v["workers"] = serving.get((app_id, v["version"]), [])
            v["state"] = _state_of(v)
        entry["versions"].sort(key=lambda v: (not v["current"], str(v["version"])))
        entry.setdefault("defined", True)
        entry["drained"] = all(v["current"] or not v["runs"] for v in entry["versions"])
    return list(out.values())


def _state_of(version: dict[str, Any]) -> str:
    if version["current"]:
        return "current"
    if not version["runs"]:
        return "drained"
    return "draining" if version["workers"] else "stranded"


def _active_versions(tx: Tx) -> tuple[list[tuple[str, str | None, int, int]],
                                       list[WorkerRow]]:
    return tx.active_versions(), tx.list_workers()


def _state(tx: Tx, *, run_id: str) -> RunState | None:
    return tx.load_run_state(run_id)


def _states(tx: Tx, *, run_ids: list[str]) -> dict[str, RunState]:
    return tx.load_run_states(run_ids)


def _require_database(db_url: str) -> None:
    """A SQLite database must exist: opening it would create (and migrate) an empty one, and
    the check would report "OK" over nothing."""
    if db_url.startswith("sqlite:") or "://" not in db_url:
        path = Path(sqlite_path(db_url))
        if not path.is_file():
            raise HistoryError(f"no database at {path}: give the --db of the deployment "
                               "(e.g. sqlite:///.stepwell/stepwell.db or postgresql://...)")


async def check_database(apps: Sequence[App], db_url: str, *, sample: int = 100
                         ) -> CheckReport:
    """`stepwell check APP --db URL`: the apps' functions' runs, and unfinished runs of
    functions the apps no longer have."""
    _require_database(db_url)
    functions = sorted(_functions(apps))
    histories = await load_histories(db_url, sample=sample, function_ids=functions)
    wanted = set(functions)
    histories = [h for h in histories if h.function_id in wanted or not h.finished]
    return await check_histories(apps, histories)
