"""Acting on a leased queue item: start or resume a run (`exec`), fire a cron tick, enforce a
timeout, or release a batch or debounce window. Each item is handled by one task of the engine's
worker; an item leased ahead of its instant (a timer) is prepared at once and acted on at due_at.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from stepwell.core.config import CronTrigger, FunctionSpec
from stepwell.core.models import SCHEDULED_TIMER, Event
from stepwell.core.queue import BATCH, CRON, DEBOUNCE, EXEC, ROUTE, TIMEOUT
from stepwell.runtime import admission, faults, scripts, versioning
from stepwell.runtime.remote import RemoteExecutor, RemoteFunction
from stepwell.runtime.scripts import Dispatch, Effects, Placement
from stepwell.runtime.session import RunSession
from stepwell.store.base import QueueItem, RunState, Tx

if TYPE_CHECKING:
    from stepwell.runtime.worker import Worker

log = logging.getLogger("stepwell.engine")


async def handle(engine: Worker, item: QueueItem,
                 states: asyncio.Future[dict[str, RunState]] | None) -> None:
    """Act on one claimed item. `states`: the claimed runs' states, loaded in one read."""
    # An item leased ahead of its instant (a timer) is loaded now and acted on at due_at.
    not_before = item.due_at if item.due_at > engine.clock.now() else None
    if item.kind == EXEC and item.run_id is not None and states is not None:
        run_id = item.run_id
        try:
            loaded = (await asyncio.shield(states)).get(run_id)
        except Exception:
            # The batch read failed (one bad run spoils the read of all): this run alone.
            try:
                loaded = await engine.store.read(lambda tx: tx.load_run_state(run_id))
            except Exception as exc:
                await faults.crashed(engine, item.id, run_id, exc, "loading the run's state")
                return
        await execute(engine, item.id, loaded, not_before=not_before,
                      may_park=not item.concurrency)
        return
    try:
        if not_before is not None:
            await engine.park_until(not_before)
        if item.kind == CRON:
            await fire_cron(engine, item)
        elif item.kind == TIMEOUT:
            await fire_timeout(engine, item)
        elif item.kind in (BATCH, DEBOUNCE):
            await fire_flow(engine, item)
        elif item.kind == ROUTE:
            owner, now, routing = engine.owner, engine.clock.now(), engine.routing
            await engine.commit(lambda tx, place, effects: admission.route_deferred(
                tx, item, owner, now, routing, place, effects))
        else:
            log.error("unknown queue item kind %r; dropping it", item.kind)
            await drop(engine, item.id)
    except Exception as exc:
        await faults.item_failed(engine, item.id, item.kind, exc)


async def drop(engine: Worker, item_id: int) -> None:
    """Delete an item that has nothing left to do."""
    owner, now = engine.owner, engine.clock.now()
    await engine.store.write(lambda tx: tx.release_item(item_id, owner, None, now))


async def run_dispatch(engine: Worker, dispatch: Dispatch) -> None:
    """A run this process leased inside a script: a new run (its state is at hand) or one an
    event, an invoke or a timeout just resumed."""
    if dispatch.new_run is not None:
        # The row just inserted is the run's state. One holding concurrency slots (leased by
        # create_run's fast path) must not sleep in memory: a sleeping run holds no slot.
        await execute(engine, dispatch.item_id, RunState(dispatch.new_run, dispatch.events),
                      started=True, may_park=not dispatch.limited)
        return
    try:
        state = await engine.store.read(lambda tx: tx.load_run_state(dispatch.run_id))
    except Exception as exc:
        await faults.crashed(engine, dispatch.item_id, dispatch.run_id, exc,
                             "loading the run's state")
        return
    await execute(engine, dispatch.item_id, state)


ORPHAN_RETRY_MS = 60_000


def orphan_warning(function_id: str) -> str:
    """The run's mark (`runs list --status orphaned` finds runs by its `orphaned:` start)."""
    return (f"orphaned: no worker that claimed this run defines function {function_id!r} "
            "(renamed or deleted?); it resumes where it was if the function comes back, or "
            f"cancel it: stepwell runs cancel --function {function_id}")


async def orphaned(engine: Worker, item_id: int, run_id: str, function_id: str) -> None:
    """A run of a function this worker does not define: another deployment's, or a function
    renamed or deleted. Hand it back for a minute (a worker that has it takes it), mark the
    run once so the dashboard and CLI say why it does not move, and log once per function
    (not once per claim)."""
    if function_id not in engine.orphans_logged:
        engine.orphans_logged.add(function_id)
        log.warning("runs of function %s are waiting for a worker that defines it (renamed or "
                    "deleted?); they resume if it comes back, or cancel them with `stepwell "
                    "runs cancel --function %s`", function_id, function_id)
    owner, now, text = engine.owner, engine.clock.now(), orphan_warning(function_id)

    def hand_back(tx: Tx) -> None:
        tx.add_run_warning(run_id, text)
        tx.release_item(item_id, owner, now + ORPHAN_RETRY_MS, now)

    await engine.store.write(hand_back)


async def execute(engine: Worker, item_id: int, state: RunState | None, *,
                  started: bool = False, not_before: int | None = None,
                  may_park: bool = False) -> None:
    """Drive a leased run. `not_before`: the item was leased ahead of its due time, nothing
    may happen before it. `may_park`: the item holds no concurrency slot, so the run may
    sleep in memory (a sleeping run must not hold a slot)."""
    if state is None or state.run.status not in ("queued", "running"):
        await drop(engine, item_id)
        return
    try:
        await _execute(engine, item_id, state, started=started, not_before=not_before,
                       may_park=may_park)
    except Exception as exc:
        await faults.crashed(engine, item_id, state.run.id, exc, "running the run")


async def _execute(engine: Worker, item_id: int, state: RunState, *, started: bool,
                   not_before: int | None, may_park: bool) -> None:
    fn = engine.registry.get(state.run.function_id)
    if fn is None:
        await orphaned(engine, item_id, state.run.id, state.run.function_id)
        return
    native = not isinstance(fn, RemoteFunction)
    if (native and engine.versioning.claim is not None and state.run.version is not None
            and not await versioning.admit(engine, item_id, state, fn)):  # type: ignore[arg-type]
        return
    if not_before is not None and (not native or state.run.started_at is None):
        await engine.park_until(not_before)
        not_before = None
    if (not started and state.run.started_at is None
            and not await start(engine, item_id, state, fn.spec)):
        return
    if isinstance(fn, RemoteFunction):
        await RemoteExecutor(engine, fn, state, item_id, engine.http_client(),
                             engine.remote_settings, engine.inflight,
                             engine.app_clients()).execute()
    else:
        # Replayed now; it parks where the run sleeps until not_before (see RunSession).
        await RunSession(engine, fn, state, item_id, not_before=not_before,
                         may_park=may_park).execute()


async def start(engine: Worker, item_id: int, state: RunState, spec: FunctionSpec) -> bool:
    """Mark a queued run started (or cancel it if it waited past timeouts.start)."""
    run, now = state.run, engine.clock.now()
    routing = engine.routing
    if spec.timeout_start_ms is not None and now - run.created_at > spec.timeout_start_ms:
        await engine.commit(lambda tx, place, effects: scripts.cancel_run(
            tx, run.id, now, place, effects, routing=routing,
            reason=f"did not start within timeouts.start ({spec.timeout_start_ms} ms)"))
        return False
    owner, until = engine.owner, engine.lease_until()

    def script(tx: Tx, place: Placement, effects: Effects) -> bool:
        scripts.hold(tx, item_id, owner, until)
        if not tx.start_run(run.id, now):
            return False
        effects.started.append(spec.qualified_id)
        if spec.timeout_finish_ms is not None:
            scripts.schedule_finish_timeout(tx, run.id, now, spec.timeout_finish_ms)
        return True

    try:
        ok = await engine.commit(script)
    except scripts.LeaseLost:
        return False
    run.status, run.started_at = "running", now
    return ok


async def fire_flow(engine: Worker, item: QueueItem) -> None:
    """A batch's timeout or a debounce window ended: start the run it was holding back."""
    fn = engine.registry.get(str((item.payload or {}).get("function_id")))
    if fn is None:
        await drop(engine, item.id)
        return
    spec, owner, now, routing = fn.spec, engine.owner, engine.clock.now(), engine.routing

    def script(tx: Tx, place: Placement, effects: Effects) -> None:
        if item.kind == BATCH:
            admission.flush_batch(tx, spec, item.unique_key, now, place, effects, routing)
        else:
            admission.fire_debounce(tx, spec, item, owner, now, place, effects, routing)

    await engine.commit(script)


async def fire_timeout(engine: Worker, item: QueueItem) -> None:
    """timeouts.start or timeouts.finish elapsed: cancel the run if it is still going."""
    payload = item.payload or {}
    which = payload.get("which", "finish")
    run_id, now, routing = item.run_id or "", engine.clock.now(), engine.routing

    def script(tx: Tx, place: Placement, effects: Effects) -> None:
        run = tx.get_run(run_id)
        tx.release_item(item.id, engine.owner, None, now)
        if run is None or run.status not in ("queued", "running"):
            return
        if which == "start" and run.started_at is not None:
            return
        scripts.cancel_run(tx, run_id, now, place, effects, routing=routing,
                           reason=f"timed out: timeouts.{which} "
                                  f"({payload.get('after_ms')} ms) elapsed")

    await engine.commit(script)


async def fire_cron(engine: Worker, item: QueueItem) -> None:
    """A schedule's tick: start its run (exactly once per tick) and arm the next tick."""
    payload = item.payload or {}
    fn = engine.registry.get(str(payload.get("function_id")))
    index = int(payload.get("index", 0))
    trigger = fn.spec.triggers[index] if fn and index < len(fn.spec.triggers) else None
    if fn is None or not isinstance(trigger, CronTrigger):
        await drop(engine, item.id)
        return
    now = engine.clock.now()
    tick = item.due_at
    # A deterministic id: if this tick is fired twice (a lease lost mid-way), the event
    # de-duplication makes the second firing start nothing.
    event = Event(name=SCHEDULED_TIMER, data={"cron": trigger.source},
                  id=f"{item.unique_key}:{tick}", ts=tick)
    next_due = trigger.schedule.next_after(max(now, tick))
    spec, owner, routing = fn.spec, engine.owner, engine.routing

    def script(tx: Tx, place: Placement, effects: Effects) -> None:
        if tx.insert_event(event, now, now - 86_400_000, processed=True):
            admission.admit(tx, spec, event, now, place, effects, routing=routing)
        tx.release_item(item.id, owner, next_due, now)

    await engine.commit(script)
