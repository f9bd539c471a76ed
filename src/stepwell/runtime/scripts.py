"""Transaction scripts: each function here runs inside one store transaction.

They combine the store's domain operations with the pure decisions of `core` (routing, wait
matching), so that "store the event, start its runs, resolve the waits it satisfies" or "commit
this step and keep the lease" is atomic. They must not touch anything but the `Tx`, their
arguments and their return value: the store may run a script again if its group fails.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from stepwell.core.config import FunctionSpec
from stepwell.core.eventsize import fit_lifecycle
from stepwell.core.models import (
    EVENT_DEDUPE_WINDOW_MS,
    FUNCTION_CANCELLED,
    FUNCTION_FAILED,
    FUNCTION_FINISHED,
    Event,
    RunStatus,
    is_lifecycle_event,
)
from stepwell.core.queue import EXEC, TIMEOUT, exec_key, timeout_key
from stepwell.core.routing import Router, match_key, path_value
from stepwell.store.base import RunRow, Tx, WaitRow

# Every pair of characters of Crockford's base32 (the ULID alphabet), by its 10-bit value.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_RANDOM_MAX = (1 << 80) - 1
_id_lock = threading.Lock()
_last_id = [0, 0]          # (milliseconds, randomness) of the previous id


def new_id() -> str:
    """A new ULID, strictly increasing within the process (as python-ulid's generator: the
    same millisecond adds one to the randomness). Made here rather than with `str(ULID())`,
    whose base32 is a slow Python loop: every event and run gets one, and that was ~10% of
    ingesting a batch of events."""
    ms = time.time_ns() // 1_000_000
    with _id_lock:
        last_ms, last_random = _last_id
        if ms > last_ms:
            random = int.from_bytes(os.urandom(10), "big")
        elif last_random < _RANDOM_MAX:
            ms, random = last_ms, last_random + 1
        else:                            # 2^80 ids in one millisecond: borrow the next one
            ms, random = last_ms + 1, int.from_bytes(os.urandom(10), "big")
        _last_id[0], _last_id[1] = ms, random
    return _crockford((ms << 80) | random)


def _crockford(value: int) -> str:
    """The 130-bit `value` as 26 Crockford base32 characters, two (10 bits) per lookup:
    a third of the time of `base64.b32encode` (a Python loop too) and a translation."""
    p = _PAIRS
    return (p[value >> 120] + p[(value >> 110) & 1023] + p[(value >> 100) & 1023]
            + p[(value >> 90) & 1023] + p[(value >> 80) & 1023] + p[(value >> 70) & 1023]
            + p[(value >> 60) & 1023] + p[(value >> 50) & 1023] + p[(value >> 40) & 1023]
            + p[(value >> 30) & 1023] + p[(value >> 20) & 1023] + p[(value >> 10) & 1023]
            + p[value & 1023])


class LeaseLost(Exception):
    """The worker no longer holds the run's queue item (cancelled, or reclaimed after a stall)."""


@dataclass(slots=True)
class Dispatch:
    """An exec item this process leased inside a script and should start right away."""

    item_id: int
    run_id: str
    new_run: RunRow | None = None          # set when the run was just created (nothing to load)
    events: list[Event] = field(default_factory=list)
    limited: bool = False                  # its item holds concurrency slots (may not park)


@dataclass(slots=True)
class Effects:
    """What a script asks the runtime to do after it commits."""

    dispatch: list[Dispatch] = field(default_factory=list)
    emitted: list[Event] = field(default_factory=list)     # stored unprocessed: ingest next
    finished_runs: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)        # function of each run started
    ended: list[tuple[str, str]] = field(default_factory=list)  # (function, final status)
    # (run id, function id, status, error) of each run that ended other than completed: logged
    unsuccessful: list[tuple[str, str, str, dict[str, Any] | None]] = field(
        default_factory=list)
    runs_created: int = 0
    event_ids: list[str] = field(default_factory=list)
    # (run id, step hash) of each wait or invoke resolved: its span is emitted (tracing)
    resolved: list[tuple[str, str]] = field(default_factory=list)
    wake: bool = False          # ready work was queued for any worker: poll now


@dataclass(slots=True)
class Placement:
    """Where new exec items go: leased to this process (fast path) or left for any worker."""

    owner: str | None
    now: int
    lease_until: int
    capacity: int                            # how many more runs this process may take now

    @property
    def has_room(self) -> bool:
        return self.owner is not None and self.capacity > 0

    def take(self) -> str | None:
        if self.owner is None or self.capacity <= 0:
            return None
        self.capacity -= 1
        return self.owner


def enqueue_exec(tx: Tx, run_id: str, due_at: int, place: Placement, effects: Effects) -> None:
    """Queue the run to execute at `due_at`; if it is due now and this process has room, lease
    it to this process right away (no polling round trip)."""
    owner = place.take() if due_at <= place.now else None
    leased = tx.enqueue(EXEC, exec_key(run_id), due_at, run_id=run_id, owner=owner,
                        lease_until=place.lease_until if owner else None)
    if leased is not None:
        effects.dispatch.append(Dispatch(leased, run_id))
        return
    if owner is not None:
        place.capacity += 1
    if due_at <= place.now:
        effects.wake = True


# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Routing:
    """The engine's static view of its functions, handed to ingestion scripts."""

    router: Router
    functions: dict[str, FunctionSpec]


@dataclass(slots=True)
class Admission:
    """Where flow control put a new run: when it may start, its place in the backlog, and the
    concurrency slots it must hold while executing."""

    due_at: int
    priority_at: int
    concurrency: list[tuple[str, int]] = field(default_factory=list)
    run_id: str = field(default_factory=lambda: new_id())


def create_run(tx: Tx, spec: FunctionSpec, events: list[Event], now: int, place: Placement,
               effects: Effects, *, parent: tuple[str, str] | None = None,
               admission: Admission | None = None, replay_of: str | None = None) -> str:
    """Insert a run and its exec item. A run due now is leased to this process at once (the
    fast path) if it has no concurrency limit, or if every one of its keys has a free slot and
    nothing waiting (`Tx.slots_free_now`: no run queued ahead of it, so keys stay FIFO); a
    delayed one, or one that would have to wait, goes to the queue, whose claim order
    (priority, then age) and parking decide. A limited function with a `priority` always
    queues: runs arriving together (one send, one commit group) are ordered by priority, and
    the first of them cannot know that a later one outranks it."""
    adm = admission or Admission(now, now)
    owner = None
    if adm.due_at <= now and place.has_room and (not adm.concurrency or (
            spec.priority is None and tx.slots_free_now(adm.concurrency, now))):
        owner = place.take()
    run = RunRow(adm.run_id, spec.qualified_id, [e.id for e in events], now,
                 parent_run_id=parent[0] if parent else None,
                 parent_step=parent[1] if parent else None, replay_of=replay_of,
                 version=spec.version)
    if owner is not None:
        # Leased to this process: it starts now, so it is `running` from the first write.
        run.status, run.started_at = "running", now
        effects.started.append(spec.qualified_id)
    tx.insert_run(run)
    effects.runs_created += 1
    item = tx.enqueue(EXEC, exec_key(run.id), adm.due_at, run_id=run.id, owner=owner,
                      lease_until=place.lease_until if owner else None,
                      priority_at=adm.priority_at, concurrency=adm.concurrency)
    if owner is not None and item is not None:
        effects.dispatch.append(Dispatch(item, run.id, run, list(events),
                                         limited=bool(adm.concurrency)))
        if spec.timeout_finish_ms is not None:
            schedule_finish_timeout(tx, run.id, now, spec.timeout_finish_ms)
    else:
        if owner is not None:
            place.capacity += 1
        if adm.due_at <= now:
            effects.wake = True
        if spec.timeout_start_ms is not None:
            tx.enqueue(TIMEOUT, timeout_key(run.id, "start"), now + spec.timeout_start_ms,
                       run_id=run.id,
                       payload={"which": "start", "after_ms": spec.timeout_start_ms})
    first = events[0].to_dict()
    for rule in spec.cancel_on:
        tx.insert_wait(WaitRow(
            run_id=run.id, kind="cancel", event_name=rule.event,
            expires_at=None if rule.timeout_ms is None else now + rule.timeout_ms,
            match_key=None if rule.match_path is None else match_key(
                rule.match_path, path_value(first, rule.match_path)),
            expr=None if rule.condition is None else rule.condition.source, event_ctx=first))
    return run.id


def record_unstarted_run(tx: Tx, spec: FunctionSpec, events: list[Event], now: int,
                         status: RunStatus, error: dict[str, Any]) -> str:
    """A run that flow control refused (skipped) or could not place (failed), kept visible: it
    ended when it was created (so retention counts its age from then)."""
    run = RunRow(new_id(), spec.qualified_id, [e.id for e in events], now, status=status,
                 ended_at=now, error=error, version=spec.version)
    tx.insert_run(run)
    return run.id


def schedule_finish_timeout(tx: Tx, run_id: str, started_at: int, finish_ms: int) -> None:
    tx.enqueue(TIMEOUT, timeout_key(run_id, "finish"), started_at + finish_ms, run_id=run_id,
               payload={"which": "finish", "after_ms": finish_ms})


def store_emitted(tx: Tx, events: list[Event], now: int, effects: Effects,
                  generation: int = 0) -> None:
    """Store events produced by the engine itself, of `generation` (one past the trigger of
    the run that sent them); they are processed in a following script (and by recovery if the
    process dies in between)."""
    for event in events:
        if tx.insert_event(event, now, now - EVENT_DEDUPE_WINDOW_MS, processed=False,
                           generation=generation):
            effects.emitted.append(event)


# --- run lifecycle ---------------------------------------------------------------------------


def hold(tx: Tx, item_id: int | None, owner: str, lease_until: int) -> None:
    """Renew the lease, or abort the script: a step must never commit without it."""
    if item_id is not None and not tx.renew_lease(item_id, owner, lease_until):
        raise LeaseLost(f"queue item {item_id} is no longer held by {owner}")


@dataclass(slots=True)
class Ending:
    """How a run ended, with what its parent (invoke) and the system events need.

    Not a shape of the run (that is `RunRow`): the command `end_run` carries out, with what no
    row holds (the triggering event, the error the system events report)."""

    run_id: str
    function_id: str
    status: RunStatus
    output: Any = None
    error: dict[str, Any] | None = None
    parent_run_id: str | None = None
    parent_step: str | None = None
    event: dict[str, Any] | None = None
    # What the system events and an invoking parent get, when it differs from the run's own
    # `error`: an SDK run stores the SDK's error body verbatim, while Inngest's
    # `inngest/function.failed` event carries `{name, message, stack, error}`.
    event_error: dict[str, Any] | None = None

    @property
    def reported_error(self) -> dict[str, Any] | None:
        return self.event_error if self.event_error is not None else self.error


def end_run(tx: Tx, ending: Ending, now: int, place: Placement, routing: Routing,
            effects: Effects) -> bool:
    """Move the run to its final status (compare-and-set), clean its queue items and waits,
    resolve the parent's invoke and emit the system events."""
    if not tx.finish_run(ending.run_id, ending.status, now, output=ending.output,
                         error=ending.error):
        return False
    tx.delete_items(run_id=ending.run_id)
    tx.delete_run_waits(ending.run_id)
    effects.finished_runs.append(ending.run_id)
    effects.ended.append((ending.function_id, ending.status))
    if ending.status != "completed":
        effects.unsuccessful.append((ending.run_id, ending.function_id, ending.status,
                                     ending.reported_error))
    if ending.parent_run_id and ending.parent_step:
        outcome = ({"data": ending.output} if ending.status == "completed" else
                   {"error": ending.reported_error or {"name": "Cancelled",
                                                       "message": ending.status}})
        if tx.resolve_memo(ending.parent_run_id, ending.parent_step, outcome, now):
            effects.resolved.append((ending.parent_run_id, ending.parent_step))
            enqueue_exec(tx, ending.parent_run_id, now, place, effects)
    emitted = lifecycle_events(ending, now, routing)
    trigger = (ending.event or {}).get("id")
    generation = (1 + tx.event_generation([trigger])     # one past the run's trigger
                  if emitted and isinstance(trigger, str) else 0)
    store_emitted(tx, emitted, now, effects, generation=generation)
    return True


def fail_bare(tx: Tx, run: RunRow, error: dict[str, Any], now: int, place: Placement,
              effects: Effects) -> None:
    """Fail a run with nothing but the store's own operations: for when `end_run` itself is
    what fails (no lifecycle events; a parent's invoke is still resolved, so it goes on)."""
    if not tx.finish_run(run.id, "failed", now, error=error):
        return
    tx.delete_items(run_id=run.id)
    tx.delete_run_waits(run.id)
    effects.finished_runs.append(run.id)
    effects.ended.append((run.function_id, "failed"))
    effects.unsuccessful.append((run.id, run.function_id, "failed", error))
    if run.parent_run_id and run.parent_step and tx.resolve_memo(
            run.parent_run_id, run.parent_step, {"error": error}, now):
        effects.resolved.append((run.parent_run_id, run.parent_step))
        enqueue_exec(tx, run.parent_run_id, now, place, effects)


def lifecycle_events(ending: Ending, now: int, routing: Routing) -> list[Event]:
    """The events that report how a run ended (`inngest/function.failed`, `.cancelled`,
    `.finished`), each within the event size limit (`fit_lifecycle`). A run that a lifecycle
    event triggered reports nothing: as in Inngest, finish handlers never trigger finish
    handlers, so no chain of them can loop."""
    trigger = (ending.event or {}).get("name")
    if isinstance(trigger, str) and is_lifecycle_event(trigger):
        return []
    system: list[Event] = []
    spec = routing.functions.get(ending.function_id)
    public_id = spec.public_id if spec is not None else ending.function_id
    base = {"function_id": public_id, "run_id": ending.run_id,
            "event": ending.event or {}}
    if ending.status == "failed":
        system.append(_system_event(FUNCTION_FAILED, {**base, "error": ending.reported_error},
                                    now))
    elif ending.status == "cancelled" and routing.router.subscribed(FUNCTION_CANCELLED):
        system.append(_system_event(FUNCTION_CANCELLED, {**base, "error": ending.reported_error},
                                    now))
    if routing.router.subscribed(FUNCTION_FINISHED):
        data = {**base, "result": ending.output} if ending.status == "completed" else {
            **base, "error": ending.reported_error}
        system.append(_system_event(FUNCTION_FINISHED, data, now))
    for event in system:
        event.data = fit_lifecycle(event.name, event.data, ending.run_id)
    return system


def _system_event(name: str, data: dict[str, Any], now: int) -> Event:
    return Event(name=name, data=data, id=new_id(), ts=now)


def cancel_run(tx: Tx, run_id: str, now: int, place: Placement, effects: Effects, *,
               reason: str, routing: Routing | None = None) -> bool:
    run = tx.get_run(run_id)
    if run is None or run.status not in ("queued", "running"):
        return False
    events = tx.get_events(run.event_ids[:1])
    ending = Ending(run_id, run.function_id, "cancelled",
                    error={"name": "Cancelled", "message": reason, "stack": ""},
                    parent_run_id=run.parent_run_id, parent_step=run.parent_step,
                    event=events[0].to_dict() if events else None)
    return end_run(tx, ending, now, place, routing or _NO_ROUTING, effects)


_NO_ROUTING = Routing(Router(()), {})

