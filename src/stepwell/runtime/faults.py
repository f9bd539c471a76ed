"""What happens when stepwell itself fails while working on a queue item (issue 10.3).

User code failing is ordinary: steps and handlers retry with backoff and then fail the run. An
unexpected exception in stepwell's own code (loading a run's state, replaying it, committing a
checkpoint, the end-of-run script, acting on a script's effects, a bug in a rare path, or an
input no one foresaw) must never leave the run leased and stuck, nor make it crash again on
every claim forever. So every session goes through `crashed`:

- the error is recorded on the run, as a failed attempt of the step `(engine)` (the same shape
  as a step's failures, so the dashboard and `run.steps` show it);
- the run is retried with the function's backoff, up to the function's `retries`;
- then it fails, with the error as its `error` (and its lifecycle events, parent invoke and
  on_failure handler, as any failure);
- if even that end script fails (the fault is in it), the run is failed by a bare script that
  only sets its status, frees its queue items and waits, and resolves a parent's invoke;
- if the database itself failed (`StorageFailure`: a full disk, a lock held by another
  process, an outage), nothing was written and it is nobody's bug: the item is handed back for
  a few seconds later, not counted as an attempt (if even that cannot be written, its lease
  expires); the run goes on from its last commit once the database is back.

The worker carries on with its other runs in every case.
"""

from __future__ import annotations

import logging
import traceback
from typing import TYPE_CHECKING, Any

from stepwell.core.backoff import retry_delay_ms
from stepwell.core.storage import StorageFailure
from stepwell.runtime import scripts
from stepwell.runtime.scripts import Effects, Ending, LeaseLost, Placement
from stepwell.store.base import Tx

if TYPE_CHECKING:
    from stepwell.runtime.worker import Worker

log = logging.getLogger("stepwell.engine")
ENGINE_KEY = "__engine__"        # failure counter of stepwell's own errors on a run
ENGINE_STEP = "(engine)"
NON_RUN_RETRY_MS = 30_000        # a cron/timeout/flow item whose handling failed: try again later
UNWRITABLE_RETRY_MS = 5_000


def engine_error(exc: BaseException, stage: str) -> dict[str, Any]:
    stack = "".join(traceback.format_exception(exc))
    return {"name": "StepwellInternalError", "stack": stack,
            "message": f"stepwell failed while {stage}: {type(exc).__name__}: {exc}"}


async def crashed(engine: Worker, item_id: int, run_id: str, exc: BaseException,
                  stage: str) -> str:
    """Record an unexpected exception on the run and retry it with backoff, or fail it once
    its retries are used up. Returns what was done: retrying, failed, gone or unrecorded."""
    if isinstance(exc, StorageFailure):
        # The database's condition (a full disk, a lock held elsewhere, an outage): nothing
        # was written, nothing is the run's fault. Not counted; the run goes on once it clears.
        log.warning("run %s: deferred, the database failed while %s: %s", run_id, stage, exc)
        await hand_back(engine, item_id, UNWRITABLE_RETRY_MS)
        return "deferred"
    log.error("run %s: stepwell failed while %s", run_id, stage, exc_info=exc)
    error = engine_error(exc, stage)
    owner, until, routing = engine.owner, engine.lease_until(), engine.routing
    interval = engine.retry_interval_ms

    def record(tx: Tx, place: Placement, effects: Effects) -> str:
        now = place.now
        scripts.hold(tx, item_id, owner, until)
        state = tx.load_run_state(run_id)
        if state is None or state.run.status not in ("queued", "running"):
            tx.release_item(item_id, owner, None, now)
            return "gone"
        crashes = len(state.failures.get(ENGINE_KEY, ()))
        spec = routing.functions.get(state.run.function_id)
        if crashes >= (spec.retries if spec is not None else 0):
            run = state.run
            ending = Ending(run.id, run.function_id, "failed", error=error,
                            parent_run_id=run.parent_run_id, parent_step=run.parent_step,
                            event=state.events[0].to_dict() if state.events else None)
            scripts.end_run(tx, ending, now, place, routing, effects)
            return "failed"
        tx.insert_step_failure(run_id, ENGINE_KEY, ENGINE_STEP, crashes, error, now)
        delay = (interval * (crashes + 1) if interval is not None
                 else retry_delay_ms(crashes + 1, seed=f"{run_id}:{ENGINE_KEY}"))
        tx.release_item(item_id, owner, now + delay, now, timer=True)
        return "retrying"

    def bare(tx: Tx, place: Placement, effects: Effects) -> str:
        now = place.now
        scripts.hold(tx, item_id, owner, until)
        run = tx.get_run(run_id)
        if run is None or run.status not in ("queued", "running"):
            tx.release_item(item_id, owner, None, now)
            return "gone"
        scripts.fail_bare(tx, run, error, now, place, effects)
        return "failed"

    for script in (record, bare):
        try:
            return await engine.commit(script)
        except LeaseLost:
            return "gone"           # cancelled or reclaimed meanwhile: not ours to fail
        except Exception:
            log.exception("run %s: recording the failure failed", run_id)
    await hand_back(engine, item_id, UNWRITABLE_RETRY_MS)
    return "unrecorded"


async def item_failed(engine: Worker, item_id: int, kind: str, exc: BaseException) -> None:
    """A cron tick, timeout or flow-control item whose handling raised: try it again later
    rather than leave it leased (its lease would expire and it would fail at once again)."""
    log.error("%s item %s failed; trying again in %d s", kind, item_id,
              NON_RUN_RETRY_MS // 1000, exc_info=exc)
    await hand_back(engine, item_id, NON_RUN_RETRY_MS)


async def hand_back(engine: Worker, item_id: int, delay_ms: int) -> None:
    owner, now = engine.owner, engine.clock.now()
    try:
        await engine.store.write(lambda tx: tx.release_item(item_id, owner, now + delay_ms, now))
    except Exception:
        log.exception("handing back queue item %s failed; its lease will expire", item_id)
