"""Finding runs and saying what each is doing: the runs list's filters, its cursor, and the
derived `state` of every run (`GET /v1/runs`, `GET /v1/runs/{id}`, `stepwell runs`, the
dashboard).

A run's `state` is derived from what the engine already stores (memos, step failures, the
run's queue item, its waits and the runs it invoked), never kept a second time, so it cannot
drift from what the engine will do. A page of runs costs one statement for the page
(`Tx.search_runs`, which also filters on what a run is doing) and one read of the details of
the page's active runs (`Tx.load_run_states` + `Tx.run_work`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

from stepwell.core.config import FunctionSpec
from stepwell.core.expressions import (
    Expression,
    ExpressionError,
    compile_event_query,
)
from stepwell.core.flow import FlowKeyError, evaluate_key
from stepwell.core.models import TERMINAL_STATUSES, Event, Memo, Run, RunStatus
from stepwell.runtime.views import run_view
from stepwell.service_views import ACTIVITIES, STATUS_NAMES, activity, is_orphaned, iso
from stepwell.store.base import RunQuery, RunRow, RunState, RunWork
from stepwell.store.run_search import DOING

if TYPE_CHECKING:
    from stepwell.service import Service

# Runs whose triggering event a `query` is evaluated on, at most, per request: a page that
# is not full after this many says so with a cursor to go on from (bounded work per request).
QUERY_SCAN: Final = 1000
SIGNAL_WAIT_KIND: Final = "signal"      # runtime.signals' wait kind


def _error(message: str) -> Exception:
    from stepwell.service_errors import InvalidInput
    return InvalidInput(message)


# --- cursors -------------------------------------------------------------------------------


def encode_cursor(created_at: int, run_id: str) -> str:
    """An opaque cursor: the position after the last run of a page (created_at, id)."""
    return base64.urlsafe_b64encode(f"{created_at}:{run_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, run_id = text.split(":", 1)
        if not run_id:
            raise ValueError(cursor)
        return int(at), run_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _error(f"'cursor' {cursor!r} is not a cursor this server gave out: pass the "
                     "'next_cursor' of the previous page unchanged") from None


# --- filters -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunFilters:
    """The runs list's filters as the transports read them (all optional)."""

    function_id: str | None = None
    status: str | None = None
    event_id: str | None = None
    run_id: str | None = None
    query: str | None = None
    since: object = None
    until: object = None
    cursor: str | None = None
    limit: int = 100

    @classmethod
    def from_params(cls, params: Mapping[str, str], limit: int) -> RunFilters:
        """From a query string's parameters (empty values count as absent)."""
        def get(name: str) -> str | None:
            value = params.get(name)
            return value if value else None
        return cls(function_id=get("function_id"), status=get("status"),
                   event_id=get("event_id"), run_id=get("run_id"), query=get("query"),
                   since=get("since"), until=get("until"), cursor=get("cursor"), limit=limit)


FILTERS: Final = ", ".join([*STATUS_NAMES, *DOING])


def _statuses(value: str) -> tuple[tuple[RunStatus, ...], str | None]:
    """`status=running` or `status=queued,running` (our names or Inngest's), or one derived
    state (`sleeping`, `waiting`, `invoking`, `retrying`, `orphaned`)."""
    names = [part.strip().lower() for part in value.split(",") if part.strip()]
    doing = [name for name in names if name in DOING]
    unknown = [name for name in names if name not in DOING and name not in STATUS_NAMES]
    if unknown:
        raise _error(f"unknown run status {unknown[0]!r}; use one of {FILTERS}")
    if doing and len(names) > 1:
        raise _error(f"status {doing[0]!r} (what an active run is doing) cannot be combined "
                     "with other statuses; give it alone")
    if doing:
        return (), doing[0]
    statuses: tuple[RunStatus, ...] = tuple(s for s in STATUS_NAMES if s in names)
    return statuses, None


def build_query(service: Service, filters: RunFilters, now: int
                ) -> tuple[RunQuery, Expression | None]:
    """The store query and the event condition for `filters`; bad input is InvalidInput."""
    from stepwell.service_errors import parse_time
    function_ids: tuple[str, ...] = ()
    if filters.function_id:
        fn = service.worker.find_function(filters.function_id)
        function_ids = (fn.spec.qualified_id if fn else filters.function_id,)
    statuses, doing = _statuses(filters.status) if filters.status else ((), None)
    since = parse_time(filters.since, "since") if filters.since is not None else None
    until = parse_time(filters.until, "until") if filters.until is not None else None
    if since is not None and until is not None and since > until:
        raise _error("'since' must not be after 'until'")
    condition = None
    if filters.query is not None:
        try:
            condition = compile_event_query(filters.query)
        except ExpressionError as exc:
            raise _error(f"invalid 'query' (a CEL expression over the triggering event, "
                         f"e.g. data.userId == 42 or event.data.userId == 42): {exc}"
                         ) from None
    query = RunQuery(function_ids=function_ids, statuses=statuses, doing=doing, now=now,
                     run_id=filters.run_id, event_id=filters.event_id, created_from=since,
                     created_until=until,
                     before=decode_cursor(filters.cursor) if filters.cursor else None,
                     limit=filters.limit)
    return query, condition


# --- derived states ------------------------------------------------------------------------


def _step_id(state: RunState, step_hash: str | None) -> str | None:
    memo = state.memos.get(step_hash) if step_hash else None
    return memo.step_id if memo else None


def _summary(out: dict[str, Any]) -> str:
    """One line for people (the CLI; the dashboard writes its own with local times)."""
    kind = out["kind"]
    step = f" (step '{out['step']}')" if out.get("step") else ""
    until = f" until {out['until']}" if out.get("until") else ""
    expires = f", expires {out['expires_at']}" if out.get("expires_at") else ""
    if kind == "sleeping":
        return f"sleeping{until}{step}"
    if kind == "waiting_for_event":
        cond = [f"match {out['match']}"] if out.get("match") else []
        cond += [f"if {out['if']}"] if out.get("if") else []
        extra = f" ({'; '.join(cond)})" if cond else ""
        return f"waiting for event {out['event']}{extra}{expires}{step}"
    if kind == "waiting_for_signal":
        return f"waiting for signal {out['signal']}{expires}{step}"
    if kind == "waiting_for_run":
        child = out.get("invoked_run_id") or "(not started yet)"
        return f"waiting for invoked run {child} of {out.get('function')}{expires}{step}"
    if kind == "retrying":
        error = out.get("error") or {}
        return (f"retrying{step}: attempt {out['attempt']} of {out['max_attempts']} at "
                f"{out.get('at')}; last error {error.get('name', 'Error')}: "
                f"{error.get('message', '')}")
    if kind == "throttled":
        return f"throttled (key {out['key']!r}){until}"
    if kind == "concurrency_limited":
        keys = ", ".join(f"{k['key']} (limit {k['limit']})" for k in out["keys"])
        return f"waiting for a concurrency slot: {keys}"
    if kind == "orphaned":
        return f"orphaned: no worker defines function {out['function']}"
    if kind == "scheduled":
        return f"queued{until}"
    return str(kind)


def _public(service: Service, function_id: str) -> str:
    fn = service.worker.registry.get(function_id)
    return str(fn.spec.public_id) if fn else function_id


def derive_state(service: Service, run: Run, state: RunState | None, work: RunWork | None,
                 now: int) -> dict[str, Any]:
    """What the run is doing now, as `{"kind", "summary", ...}` with the fields of its kind:
    `sleeping` (until), `waiting_for_event` (event, match, if, expires_at),
    `waiting_for_signal` (signal, expires_at), `waiting_for_run` (invoked_run_id, function,
    expires_at), `retrying` (attempt, max_attempts, at, error), `throttled` (key, until),
    `concurrency_limited` (keys), `orphaned` (function), `scheduled` (until), `queued`,
    `running`; an ended run's kind is its status. `filter` names the `status` filter that
    lists it (`sleeping`, `waiting`, ...), when there is one."""
    out: dict[str, Any] = {"kind": run.status}
    if run.status in TERMINAL_STATUSES or state is None:
        out["summary"] = run.status
        return out
    work = work or RunWork()
    fn = service.worker.registry.get(run.function_id)
    spec: FunctionSpec | None = fn.spec if fn else None
    doing = activity(run)
    if is_orphaned(run, lambda qid: service.worker.registry.get(qid) is not None):
        out |= {"kind": "orphaned", "filter": "orphaned", "function": run.function_id}
    elif work.blocked:
        out |= {"kind": "concurrency_limited",
                "keys": [{"key": k, "limit": n} for k, n in work.concurrency]}
    elif doing == "sleeping" and (memo := _first(state, lambda m: m.sleeping(now))):
        out |= {"kind": "sleeping", "step": memo.step_id, "until": iso(memo.due_at)}
    elif doing in ("waiting", "invoking") and (memo := _first(
            state, lambda m: m.pending and (m.kind == "wait") == (doing == "waiting"))):
        out |= _pending(service, memo.step_id, memo.hash, memo.due_at, work)
    elif doing == "retrying" and (step := next(
            (s for s in run.steps if s.status == "retrying"), None)):
        retries = spec.retries if spec is not None else 0
        out |= {"kind": "retrying", "step": step.id, "attempt": step.attempts + 1,
                "max_attempts": retries + 1, "at": iso(work.due_at), "error": step.error}
    elif work.due_at is not None and work.due_at > now and not work.leased:
        throttle = spec.throttle if spec is not None and run.status == "queued" else None
        if throttle is not None and state.events:
            try:
                key = evaluate_key(throttle.key, state.events[0].to_dict(), option="throttle")
            except FlowKeyError:
                key = ""
            out |= {"kind": "throttled", "key": key, "until": iso(work.due_at)}
        else:
            out |= {"kind": "scheduled", "until": iso(work.due_at)}
    if doing is not None and out["kind"] not in ("orphaned", "concurrency_limited"):
        out["filter"] = doing
    out["summary"] = _summary(out)
    return out


def _first(state: RunState, wanted: Callable[[Memo], bool]) -> Memo | None:
    """The first recorded step (in the run's order) that `wanted` picks, if any: the view's
    step statuses and the memos can disagree for an instant (another clock reading, an SDK
    step kind the view maps differently), and a state must never fail the whole request."""
    return next((m for m in sorted(state.memos.values(), key=lambda m: m.seq) if wanted(m)),
                None)


def _pending(service: Service, step_id: str, step_hash: str, due_at: int | None,
             work: RunWork) -> dict[str, Any]:
    """A wait, signal wait or invoke step still pending, with what it waits for."""
    wait = next((w for w in work.waits if w.step_hash == step_hash and w.kind != "cancel"),
                None)
    if wait is not None and wait.kind == SIGNAL_WAIT_KIND:
        return {"kind": "waiting_for_signal", "step": step_id, "signal": wait.match_key,
                "expires_at": iso(wait.expires_at)}
    if wait is not None:
        match = wait.match_key.split("=", 1)[0] if wait.match_key else None
        return {"kind": "waiting_for_event", "step": step_id, "event": wait.event_name,
                "match": match, "if": wait.expr, "expires_at": iso(wait.expires_at)}
    child = next((c for c in work.children if c[3] == step_hash), None)
    return {"kind": "waiting_for_run", "step": step_id,
            "invoked_run_id": child[0] if child else None,
            "function": _public(service, child[1]) if child else None,
            "invoked_run_status": STATUS_NAMES[child[2]] if child else None,  # type: ignore[index]
            "expires_at": iso(due_at)}


# --- reading -------------------------------------------------------------------------------


async def details(service: Service, run_ids: list[str]
                  ) -> tuple[dict[str, RunState], dict[str, RunWork]]:
    """The states and `RunWork` of these runs, in one read."""
    if not run_ids:
        return {}, {}
    return await service.worker.read(
        lambda tx: (tx.load_run_states(run_ids), tx.run_work(run_ids)))


async def run_state(service: Service, run: Run) -> dict[str, Any]:
    """The derived `state` of one run (the run page)."""
    states, works = await details(service, [run.id] if not run.done else [])
    return derive_state(service, run, states.get(run.id), works.get(run.id),
                        service.worker.clock.now())


async def _read_page(service: Service, query: RunQuery) -> list[RunRow]:
    return await service.worker.read(lambda tx: tx.search_runs(query))


async def _first_events(service: Service, rows: list[RunRow]) -> dict[str, Event]:
    """The triggering event of each run (its first), by id, in one read."""
    ids = sorted({r.event_ids[0] for r in rows if r.event_ids})
    return {e.id: e for e in await service.worker.read(lambda tx: tx.get_events(ids))}


async def search(service: Service, filters: RunFilters) -> tuple[list[dict[str, Any]], str | None]:
    """A page of runs (newest first, without steps, each with its `state`) and the cursor of
    the next page (None: this was the last)."""
    now = service.worker.clock.now()
    query, condition = build_query(service, filters, now)
    found: list[Run] = []
    cursor: str | None = None
    scanned = 0
    while True:
        batch = query.limit + 1 if condition is None else min(max(query.limit, 100),
                                                              QUERY_SCAN - scanned)
        rows = await _read_page(service, replace(query, limit=batch))
        events: dict[str, Event] = {}
        if condition is not None and rows:
            events = await _first_events(service, rows)
        consumed = 0
        position: tuple[int, str] | None = None
        for row in rows:
            consumed += 1
            position = (row.created_at, row.id)
            if condition is not None:
                first = events.get(row.event_ids[0]) if row.event_ids else None
                if first is None or not condition.matches(first.to_dict()):
                    continue
            found.append(run_view(RunState(row, []), now=now))
            if len(found) == query.limit:
                break
        scanned += consumed
        full_batch = len(rows) == batch
        if len(found) == query.limit:
            if (consumed < len(rows) or full_batch) and position is not None:
                cursor = encode_cursor(*position)
            break
        if not full_batch or position is None:
            break
        if scanned >= QUERY_SCAN:       # bounded: the caller goes on from here
            cursor = encode_cursor(*position)
            break
        query = replace(query, before=position)
    active = [run.id for run in found if not run.done]
    states, works = await details(service, active)
    out = []
    for run in found:
        state = states.get(run.id)
        full = run_view(state, now=now) if state is not None else run
        derived = derive_state(service, full, state, works.get(run.id), now)
        if query.doing is not None and derived.get("filter") != query.doing:
            continue        # the SQL's candidate is doing something else first (rare)
        shown = service._run_dict(full, steps=False)
        shown["activity"] = "orphaned" if derived.get("kind") == "orphaned" else activity(full)
        shown["state"] = derived
        out.append(shown)
    return out, cursor


async def page(service: Service, filters: RunFilters, *, outputs: bool = True
               ) -> tuple[list[dict[str, Any]], str | None]:
    """`search`, each run with the name of the event that triggered it (`event_name`), so
    a runs table can show what started each run without one request per row: all the names
    come from one read of the distinct event ids on the page.

    `outputs=False` leaves out each run's `output` and `error` (set to null): a table that
    refreshes every 2 s should not download a hundred large outputs it does not show."""
    runs, cursor = await search(service, filters)
    if not outputs:
        for run in runs:
            run["output"] = run["error"] = None
    ids = sorted({run["event_id"] for run in runs if run["event_id"]})
    names: dict[str, str] = {}
    if ids:
        events = await service.worker.read(lambda tx: tx.get_events(ids))
        names = {event.id: event.name for event in events}
    for run in runs:
        run["event_name"] = names.get(run["event_id"]) if run["event_id"] else None
    return runs, cursor


__all__ = ["ACTIVITIES", "RunFilters", "derive_state", "page", "run_state", "search"]
