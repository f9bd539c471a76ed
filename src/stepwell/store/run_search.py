"""The SQL behind `Tx.search_runs` and `Tx.run_work`, shared by both backends.

The two dialects differ here only in the placeholder (`?` or `%s`) and the order of the run
columns, so one builder serves both and the filters cannot drift apart. What a running run is
doing is derived from the tables the engine already maintains (memos, step failures, warnings),
never stored twice: each state is one `EXISTS` over the primary key of `memos` or
`step_failures` (both lead with `run_id`). Walking every running run with it costs a probe
per run, so a state that marks few runs (`MARKED`, a partial index each) is read from its
marks instead: a filtered page costs one count and one statement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from stepwell.store.base import RunQuery, RunRow, RunWork, WaitRow
from stepwell.store.rows import run_from_row

# What an active run may be doing, as SQL over `runs` (the alias is the table's name). The
# runtime's `views.run_view` says the same in Python; the service checks each page's runs
# with it, so a run with two states at once (a retry while a sleep is recorded) is shown
# under the one the view names. A new derived state is one entry here.
#
# Each probe ends in `LIMIT 1 OFFSET 0`: that keeps Postgres from turning it into a join that
# hashes every sleep, wait or failure (its choice on some statistics: 400 ms a page at
# 50,000 running runs) instead of probing runs newest first until a page is full. SQLite
# ignores it.
DOING: Final[dict[str, str]] = {
    "sleeping": ("runs.status = 'running' AND EXISTS (SELECT 1 FROM memos m WHERE "
                 "m.run_id = runs.id AND m.kind = 'sleep' AND m.due_at > {now} "
                 "LIMIT 1 OFFSET 0)"),
    "waiting": ("runs.status = 'running' AND EXISTS (SELECT 1 FROM memos m WHERE "
                "m.run_id = runs.id AND m.kind = 'wait' AND m.outcome IS NULL "
                "LIMIT 1 OFFSET 0)"),
    "invoking": ("runs.status = 'running' AND EXISTS (SELECT 1 FROM memos m WHERE "
                 "m.run_id = runs.id AND m.kind = 'invoke' AND m.outcome IS NULL "
                 "LIMIT 1 OFFSET 0)"),
    "retrying": ("runs.status = 'running' AND EXISTS (SELECT 1 FROM step_failures f WHERE "
                 "f.run_id = runs.id AND NOT EXISTS (SELECT 1 FROM memos m WHERE "
                 "m.run_id = f.run_id AND m.hash = f.hash) LIMIT 1 OFFSET 0)"),
    "orphaned": "runs.status IN ('queued', 'running') AND runs.warnings LIKE {orphan}",
}
ORPHAN_PATTERN: Final = '%"orphaned: %'

# The rows that mark a state, each read from a small partial index (migrations 0020, 0022):
# future sleeps, unresolved waits and invokes, failed attempts not yet followed by their
# step's memo or their run's end, runs with warnings. Every run in the state has one (runs
# that ended may too: a run cancelled while it slept).
MARKED: Final[dict[str, str]] = {
    "retrying": "SELECT run_id FROM step_failures WHERE unresolved IS NOT NULL",
    "sleeping": "SELECT run_id FROM memos WHERE kind = 'sleep' AND due_at > {now}",
    "waiting": "SELECT run_id FROM memos WHERE kind = 'wait' AND outcome IS NULL",
    "invoking": "SELECT run_id FROM memos WHERE kind = 'invoke' AND outcome IS NULL",
    "orphaned": "SELECT id AS run_id FROM runs WHERE warnings IS NOT NULL",
}
# Up to this many marked runs, a filter reads them all and sorts them (a page costs what the
# state holds); past it, it walks the runs newest first and checks each (`DOING`), which
# finds a page after about (running runs / marked runs) x page size. Reading the marks costs
# about a microsecond each, so the limit stays low (bench/run_states.py).
MARKED_DRIVE_LIMIT: Final = 2000


def _marks(mark: str, count: int) -> str:
    return ", ".join([mark] * count)


def _doing_args(template: str, query: RunQuery) -> list[Any]:
    """A `DOING` or `MARKED` template's arguments, in the order they appear in it."""
    return ([query.now] if "{now}" in template else []) + (
        [ORPHAN_PATTERN] if "{orphan}" in template else [])


def marked_sql(query: RunQuery, mark: str) -> tuple[str, list[Any]] | None:
    """The marks of `query.doing`, up to `MARKED_DRIVE_LIMIT + 1` of them (one range of a
    partial index), a run id each (a run may have two: parallel sleeps), for `search_sql`'s
    `marked`; None when the state has no mark."""
    template = MARKED.get(query.doing or "")
    if template is None:
        return None
    return (f"{template.format(now=mark)} LIMIT {MARKED_DRIVE_LIMIT + 1}",
            _doing_args(template, query))


def search_sql(query: RunQuery, columns: str, mark: str, *,
               marked: Sequence[str] | None = None) -> tuple[str, list[Any]]:
    """One SELECT of `columns` (qualified with `runs.`) for `query`, and its arguments.
    `marked` is what `marked_sql` found: when it is all of them, the runs are looked up by
    id, not walked."""
    where: list[str] = []
    args: list[Any] = []
    source = "runs"
    if query.doing is not None and marked is not None and len(marked) <= MARKED_DRIVE_LIMIT:
        marked = list(dict.fromkeys(marked))
        if not marked:
            return "SELECT NULL WHERE 1 = 0", []
        # The ids first, then each run by primary key: a CROSS JOIN keeps SQLite's planner,
        # which has no statistics, from walking the runs index in order instead.
        rows = ", ".join([f"({mark})"] * len(marked))
        source = f"(VALUES {rows}) AS marked CROSS JOIN runs"
        where.append("runs.id = marked.column1")
        args += list(marked)
    if query.event_id is not None:
        # Batched runs list all their events in run_events; others only in runs.event_id.
        where.append(f"(runs.event_id = {mark} OR runs.id IN (SELECT run_id FROM run_events "
                     f"WHERE event_id = {mark}))")
        args += [query.event_id, query.event_id]
    if query.run_id is not None:
        where.append(f"runs.id = {mark}")
        args.append(query.run_id)
    if query.function_ids:
        where.append(f"runs.function_id IN ({_marks(mark, len(query.function_ids))})")
        args += list(query.function_ids)
    if query.statuses:
        where.append(f"runs.status IN ({_marks(mark, len(query.statuses))})")
        args += list(query.statuses)
    if query.doing is not None:
        template = DOING[query.doing]
        args += _doing_args(template, query)
        where.append(template.format(now=mark, orphan=mark))
    if query.created_from is not None:
        where.append(f"runs.created_at >= {mark}")
        args.append(query.created_from)
    if query.created_until is not None:
        where.append(f"runs.created_at < {mark}")
        args.append(query.created_until)
    if query.before is not None:
        at, run_id = query.before
        where.append(f"(runs.created_at < {mark} OR (runs.created_at = {mark} AND "
                     f"runs.id < {mark}))")
        args += [at, at, run_id]
    selected = ", ".join(f"runs.{c.strip()}" for c in columns.split(","))
    sql = f"SELECT {selected} FROM {source}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY runs.created_at DESC, runs.id DESC LIMIT {mark}"
    args.append(query.limit)
    return sql, args


def search(query: RunQuery, columns: str, mark: str,
           rows: Callable[[str, list[Any]], Iterable[Sequence[Any]]]) -> list[RunRow]:
    """`Tx.search_runs` for a backend whose `rows(sql, args)` runs one SELECT: the state's
    marks first (`marked_sql`, when it has any), then the page (`search_sql`)."""
    marked = marked_sql(query, mark)
    ids = None if marked is None else [row[0] for row in rows(*marked)]
    sql, args = search_sql(query, columns, mark, marked=ids)
    return [run_from_row(row) for row in rows(sql, args)]


def work_sql(run_ids: Sequence[str], mark: str) -> tuple[str, str, str]:
    """The three SELECTs of `Tx.run_work` (exec items, waits, children), each taking
    `run_ids` as its arguments."""
    marks = _marks(mark, len(run_ids))
    return (f"SELECT run_id, due_at, owner, blocked, ck1, cl1, ck2, cl2 FROM queue "
            f"WHERE run_id IN ({marks}) AND kind = 'exec'",
            f"SELECT id, run_id, kind, step_hash, event_name, match_key, expr, expires_at "
            f"FROM waits WHERE run_id IN ({marks}) ORDER BY id",
            f"SELECT id, function_id, status, parent_step, parent_run_id FROM runs "
            f"WHERE parent_run_id IN ({marks}) ORDER BY created_at, id")


def collect_work(run_ids: Sequence[str], items: Sequence[Sequence[Any]],
                 waits: Sequence[Sequence[Any]], children: Sequence[Sequence[Any]]
                 ) -> dict[str, RunWork]:
    """`RunWork` per run from the rows of `work_sql`'s three statements."""
    out = {run_id: RunWork() for run_id in run_ids}
    for run_id, due_at, owner, blocked, ck1, cl1, ck2, cl2 in items:
        work = out[run_id]
        work.due_at, work.leased, work.blocked = due_at, owner is not None, bool(blocked)
        work.concurrency = [(k, int(n)) for k, n in ((ck1, cl1), (ck2, cl2)) if k is not None]
    for wait_id, run_id, kind, step_hash, event_name, match_key, expr, expires_at in waits:
        out[run_id].waits.append(WaitRow(run_id=run_id, kind=kind, event_name=event_name,
                                         expires_at=expires_at, step_hash=step_hash,
                                         match_key=match_key, expr=expr, id=wait_id))
    for child_id, function_id, status, parent_step, parent_run_id in children:
        out[parent_run_id].children.append((child_id, function_id, status, parent_step))
    return out
