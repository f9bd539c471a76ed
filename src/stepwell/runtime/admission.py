"""Admission: how an event becomes runs, through flow control.

Each function's options are applied in a fixed order, inside the transaction that stores the
event: batch (collect) -> idempotency and rate limit (skip) -> debounce (postpone) -> singleton
(skip or cancel the active run) -> throttle (delay, FIFO) -> priority and concurrency (the run's
place in the backlog). The decisions themselves are pure functions in `core.flow`; this module
loads and stores their state.
"""

from __future__ import annotations

from typing import Any

from stepwell.core.config import FunctionSpec, id_for_key
from stepwell.core.expressions import ExpressionError, compile_expression
from stepwell.core.flow import (
    FlowKeyError,
    batch_is_full,
    concurrency_blocked_by,
    debounce_due,
    evaluate_key,
    priority_offset_ms,
    rate_limit_gcra,
    throttle_gcra,
)
from stepwell.core.models import EVENT_DEDUPE_WINDOW_MS, INPUT_PREFIX, Event, Memo
from stepwell.core.queue import (
    BATCH,
    DEBOUNCE,
    ROUTE,
    batch_key,
    concurrency_key,
    debounce_key,
    idempotency_key,
    rate_limit_key,
    route_key,
    singleton_key,
    throttle_key,
)
from stepwell.core.routing import event_match_keys, match_key, path_value
from stepwell.runtime.scripts import (
    Admission,
    Effects,
    Placement,
    Routing,
    cancel_run,
    create_run,
    enqueue_exec,
    record_unstarted_run,
)
from stepwell.store.base import ClaimVersions, QueueItem, Tx

IDEMPOTENCY_WINDOW_MS = 24 * 3600 * 1000


def gcra_state(state: tuple[str | None, int | None] | None) -> int | None:
    """A stored GCRA arrival time (an exact integer, kept as text)."""
    return None if state is None or state[0] is None else int(state[0])


def ingest_events(tx: Tx, events: list[Event], now: int, routing: Routing, place: Placement,
                  effects: Effects, *, already_stored: bool = False) -> None:
    """Store events (de-duplicated by id for 24h) and process each: start the runs it triggers,
    resolve the waits it satisfies, apply the cancellations it asks for."""
    for event in events:
        if already_stored:
            if not tx.mark_event_processed(event.id):
                continue
        elif not tx.insert_event(event, now, now - EVENT_DEDUPE_WINDOW_MS, processed=True):
            continue
        effects.event_ids.append(event.id)
        process_event(tx, event, now, routing, place, effects)


def defer_events(tx: Tx, events: list[Event], now: int) -> None:
    """Store events for a worker to route (a process that only sends events knows no
    functions): unprocessed, with one `route` queue item, so the first worker that claims it
    routes them with its functions, through the same queue and wake-ups as any work."""
    stored = [e.id for e in events
              if tx.insert_event(e, now, now - EVENT_DEDUPE_WINDOW_MS, processed=False)]
    if stored:
        tx.enqueue(ROUTE, route_key(stored[0]), now, payload={"events": stored})


def route_deferred(tx: Tx, item: QueueItem, owner: str, now: int, routing: Routing,
                   place: Placement, effects: Effects) -> None:
    """A worker routes events a sender deferred (each once: `mark_event_processed` is a
    compare-and-set, shared with the recovery of unprocessed events)."""
    ids = (item.payload or {}).get("events") or []
    ingest_events(tx, tx.get_events(ids), now, routing, place, effects, already_stored=True)
    tx.release_item(item.id, owner, None, now)


def process_event(tx: Tx, event: Event, now: int, routing: Routing, place: Placement,
                  effects: Effects) -> None:
    payload = event.to_dict()
    for spec in routing.router.route(payload):
        admit(tx, spec, event, now, place, effects, routing=routing)
    keys = event_match_keys(payload)
    if keys is None:
        keys = [match_key(p, path_value(payload, p)) for p in tx.match_paths(event.name)]
    for wait in tx.find_waits(event.name, keys):
        if wait.expires_at is not None and wait.expires_at < now:
            continue
        if wait.expr is not None:
            try:
                condition = compile_expression(wait.expr)
            except ExpressionError:
                # Stored by an older version that did not check it: it can match nothing,
                # and must not fail the ingestion of this event (and of every later one).
                continue
            if not condition.matches(wait.event_ctx, payload):
                continue
        if not tx.delete_wait(wait.id):
            continue
        if wait.kind == "cancel":
            cancel_run(tx, wait.run_id, now, place, effects, routing=routing,
                       reason=f"cancelled by event '{event.name}' ({event.id})")
        elif wait.step_hash is not None and tx.resolve_memo(
                wait.run_id, wait.step_hash, {"data": payload}, now):
            effects.resolved.append((wait.run_id, wait.step_hash))
            enqueue_exec(tx, wait.run_id, now, place, effects)


def _skip(tx: Tx, spec: FunctionSpec, events: list[Event], now: int, name: str,
          message: str) -> None:
    record_unstarted_run(tx, spec, events, now, "skipped",
                         {"name": name, "message": message, "stack": ""})


def _key_failed(tx: Tx, spec: FunctionSpec, events: list[Event], now: int,
                exc: FlowKeyError) -> None:
    record_unstarted_run(tx, spec, events, now, "failed",
                         {"name": "FlowControlKeyError", "message": str(exc), "stack": ""})


def admit(tx: Tx, spec: FunctionSpec, event: Event, now: int, place: Placement,
          effects: Effects, *, routing: Routing, parent: tuple[str, str] | None = None) -> None:
    """Start `spec` for one triggering event, through the function's flow control."""
    payload = event.to_dict()
    qid = id_for_key(spec.qualified_id)
    try:
        if spec.batch is not None and parent is None:
            condition = spec.batch.condition
            if condition is None or condition.matches(payload):
                _collect_batch(tx, spec, event, now, place, effects, routing)
                return
        if spec.idempotency is not None:
            key = idempotency_key(
                qid, evaluate_key(spec.idempotency, payload, option="idempotency"))
            state = tx.get_flow(key)
            if state is not None and state[1] is not None and state[1] > now:
                _skip(tx, spec, [event], now, "Idempotent",
                      f"an earlier event with the same idempotency key "
                      f"'{spec.idempotency.source}' started a run within 24h")
                return
            tx.put_flow(key, expires_at=now + IDEMPOTENCY_WINDOW_MS)
        if spec.rate_limit is not None:
            rl = spec.rate_limit
            key = rate_limit_key(qid, evaluate_key(rl.key, payload, option="rate_limit"))
            state = tx.get_flow(key)
            gcra = rate_limit_gcra(rl.limit, rl.period_ms)
            allowed, tat = gcra.allows(gcra_state(state), now)
            if not allowed:
                _skip(tx, spec, [event], now, "RateLimited",
                      f"rate limit of {rl.limit} per {rl.period_ms} ms reached"
                      + (f" for key '{rl.key.source}'" if rl.key else ""))
                return
            tx.put_flow(key, text=str(tat), expires_at=gcra.expiry(tat))
        if spec.debounce is not None and parent is None:
            _debounce(tx, spec, event, now)
            return
        start_run(tx, spec, [event], now, place, effects, routing=routing, parent=parent)
    except FlowKeyError as exc:
        _key_failed(tx, spec, [event], now, exc)


def start_run(tx: Tx, spec: FunctionSpec, events: list[Event], now: int, place: Placement,
              effects: Effects, *, routing: Routing, parent: tuple[str, str] | None = None,
              replay_of: str | None = None) -> str | None:
    """The last stages: singleton, throttle, priority, concurrency; then the run exists."""
    payload = events[0].to_dict()
    qid = id_for_key(spec.qualified_id)
    admission = Admission(now, now)
    try:
        if spec.singleton is not None:
            single = spec.singleton
            key = singleton_key(qid, evaluate_key(single.key, payload, option="singleton"))
            state = tx.get_flow(key)
            holder = None if state is None else state[0]
            active = holder is not None and (run := tx.get_run(holder)) is not None and (
                run.status in ("queued", "running"))
            if active and single.mode == "skip":
                _skip(tx, spec, events, now, "Singleton",
                      f"run {holder} is still active for this singleton key")
                return None
            if active and holder is not None:
                cancel_run(tx, holder, now, place, effects, routing=routing,
                           reason="replaced by a newer run (singleton mode 'cancel')")
            tx.put_flow(key, text=admission.run_id)
        if spec.throttle is not None:
            th = spec.throttle
            key = throttle_key(qid, evaluate_key(th.key, payload, option="throttle"))
            state = tx.get_flow(key)
            gcra = throttle_gcra(th.limit, th.period_ms, th.burst)
            start, tat = gcra.schedule(gcra_state(state), now)
            tx.put_flow(key, text=str(tat), expires_at=gcra.expiry(tat))
            admission.due_at = start
        admission.priority_at = admission.due_at - priority_offset_ms(spec.priority, payload)
        for limit in spec.concurrency:
            value = evaluate_key(limit.key, payload, option="concurrency")
            scope = {"fn": qid, "env": "env", "account": "account"}[limit.scope]
            admission.concurrency.append((concurrency_key(scope, value), limit.limit))
    except FlowKeyError as exc:
        _key_failed(tx, spec, events, now, exc)
        return None
    return create_run(tx, spec, events, now, place, effects, parent=parent, admission=admission,
                      replay_of=replay_of)


class ReplayError(ValueError):
    """A replay that cannot be made (the run or the step does not exist)."""


class RunNotFound(ReplayError, LookupError):
    """The run to replay does not exist."""


def replay_run(tx: Tx, spec: FunctionSpec, run_id: str, now: int, place: Placement,
               effects: Effects, *, routing: Routing, from_step: str | None = None,
               step_input: list[Any] | None = None) -> str | None:
    """A new run of the run's function with the same events, through the function's
    concurrency, throttle and singleton (not idempotency or rate limits: it was asked for).

    With `from_step`, the results of the steps recorded before it are copied into the new run,
    which replays them and executes again from that step on ("rerun from step"); with
    `step_input` as well, that step runs with these arguments instead of its own (stored as an
    "input" memo the SDK receives as `{"input": [...]}`)."""
    state = tx.load_run_state(run_id)
    if state is None:
        raise RunNotFound(f"no run with id {run_id!r}")
    if not state.events:
        raise ReplayError(f"run {run_id} has no stored events left to replay it with")
    copied = []
    if from_step is not None:
        recorded = sorted((m for m in state.memos.values() if m.kind != "input"),
                          key=lambda m: m.seq)
        first = next((m for m in recorded if m.step_id == from_step), None)
        if first is None:
            known = ", ".join(dict.fromkeys(m.step_id for m in recorded)) or "none"
            raise ReplayError(f"run {run_id} has no step {from_step!r} (its steps: {known})")
        copied = [m for m in recorded if m.seq < first.seq and not m.pending]
        if step_input is not None:
            if first.kind != "run":
                raise ReplayError(f"step {from_step!r} of run {run_id} is a {first.kind} step; "
                                  "only step.run steps take input")
            copied.append(Memo(INPUT_PREFIX + first.hash, first.step_id, "input", first.seq,
                               data=list(step_input), started_at=now, ended_at=now))
    new_id = start_run(tx, spec, state.events, now, place, effects, routing=routing,
                       replay_of=run_id)
    if new_id is not None and copied:
        for memo in copied:
            tx.insert_memo(new_id, memo)
        # Leased here, it must load the copied results before it runs, not start empty.
        for dispatch in effects.dispatch:
            if dispatch.run_id == new_id:
                dispatch.new_run = None
    return new_id


def _collect_batch(tx: Tx, spec: FunctionSpec, event: Event, now: int, place: Placement,
                   effects: Effects, routing: Routing) -> None:
    batch = spec.batch
    assert batch is not None
    key = batch_key(id_for_key(spec.qualified_id),
                    evaluate_key(batch.key, event.to_dict(), option="batch"))
    size = tx.add_batch_event(key, event.id)
    if batch_is_full(size, batch.max_size):
        flush_batch(tx, spec, key, now, place, effects, routing)
    elif size == 1:
        # `first_at`: when the window opened (shown by `Tx.held_windows`), as a debounce's.
        tx.enqueue(BATCH, key, now + batch.timeout_ms,
                   payload={"function_id": spec.qualified_id, "first_at": now})


def flush_batch(tx: Tx, spec: FunctionSpec, key: str, now: int, place: Placement,
                effects: Effects, routing: Routing) -> None:
    """One run with every event collected under the key (if any are left)."""
    item = tx.get_item(key)
    if item is not None:
        tx.delete_item(item.id)
    events = tx.get_events(tx.take_batch(key))
    if events:
        start_run(tx, spec, events, now, place, effects, routing=routing)


def _debounce(tx: Tx, spec: FunctionSpec, event: Event, now: int) -> None:
    debounce = spec.debounce
    assert debounce is not None
    key = debounce_key(id_for_key(spec.qualified_id),
                       evaluate_key(debounce.key, event.to_dict(), option="debounce"))
    item = tx.get_item(key)
    # The window's latest event is the item's `event_id` (the column keeps it from pruning).
    if item is None:
        tx.enqueue(DEBOUNCE, key, debounce_due(now, now, debounce.period_ms,
                                               debounce.timeout_ms),
                   payload={"function_id": spec.qualified_id, "first_at": now},
                   event_id=event.id)
        return
    payload: dict[str, Any] = dict(item.payload or {})
    payload.pop("event_id", None)       # where stepwell before schema v10 kept it
    due = debounce_due(now, int(payload.get("first_at", now)), debounce.period_ms,
                       debounce.timeout_ms)
    tx.update_item(item.id, due, payload, event_id=event.id)


def fire_debounce(tx: Tx, spec: FunctionSpec, item: QueueItem, owner: str, now: int,
                  place: Placement, effects: Effects, routing: Routing) -> None:
    """The quiet period ended: one run with the last event. If an event postponed the window
    after this item was claimed, re-arm it instead."""
    current = tx.get_item(item.unique_key)
    if current is None or current.id != item.id:
        return
    if current.due_at > now:
        tx.release_item(item.id, owner, current.due_at, now)
        return
    tx.release_item(item.id, owner, None, now)
    events = tx.get_events([current.event_id or ""])
    if events:
        start_run(tx, spec, events, now, place, effects, routing=routing)


def claim(tx: Tx, now: int, owner: str, lease_until: int, limit: int, *,
          versions: ClaimVersions | None = None) -> list[QueueItem]:
    """Lease ready items in priority order; those whose concurrency key is full are parked
    (blocked) in order, to be woken FIFO as slots free.

    Every claimed item is leased (and so counted as holding its keys) until decided, so the
    slots in use before an item are the held count minus this claim's undecided items.
    `versions`: a versioned worker's filter (`runtime.versioning`).
    """
    items = tx.claim_due(now, owner, lease_until, limit, versions=versions)
    undecided: dict[str, int] = {}
    for item in items:
        for key, _ in item.concurrency:
            undecided[key] = undecided.get(key, 0) + 1
    out = []
    for item in items:
        if item.concurrency:
            held = [tx.count_held(key) - undecided[key] for key, _ in item.concurrency]
            for key, _ in item.concurrency:
                undecided[key] -= 1
            if concurrency_blocked_by(held, [n for _, n in item.concurrency]) is not None:
                tx.block_item(item.id, owner)
                continue
        out.append(item)
    return out
