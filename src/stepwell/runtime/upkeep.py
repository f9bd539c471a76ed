"""Housekeeping a worker does besides running work: the maintenance loop (renewing its leases,
releasing expired ones, picking up apps synced elsewhere and events left unprocessed), the
cancellation loop (stopping step bodies whose run another process cancelled),
retention (pruning old runs, events and flow-control state), telling its own leases from a dead
process's, and tuning the collector."""

from __future__ import annotations

import asyncio
import datetime
import functools
import gc
import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING

from stepwell.core.config import ConfigError
from stepwell.core.durations import parse_duration_ms
from stepwell.runtime import interrupts
from stepwell.runtime.clock import Clock, wall_ms
from stepwell.store.base import Store, Tx

if TYPE_CHECKING:
    from stepwell.runtime.worker import Worker

log = logging.getLogger("stepwell.engine")

DEFAULT_GC_THRESHOLD, TUNED_GC_THRESHOLD = 700, 50_000
PRUNE_BATCH, PRUNE_ROUNDS = 500, 20      # rows per table per transaction; rounds per call
MIN_RETENTION_MS = 24 * 3600 * 1000      # event de-duplication and idempotency keep 24 h
UNPROCESSED_GRACE_MS = 5_000             # stored events younger than this are still in flight


async def maintenance_loop(worker: Worker) -> None:
    """`maintain` every third of the lease time, for as long as the worker runs."""
    interval = max(worker.lease_ms / 3000, 0.05)
    while worker.running:
        await asyncio.sleep(interval)
        try:
            await maintain(worker)
        except Exception:
            log.exception("maintenance failed; will retry")


async def cancellation_loop(worker: Worker) -> None:
    """Stop the step bodies running here whose run another process cancelled (see
    runtime/interrupts.py): about once a second, re-read the runs whose body has been running
    for longer than that. Costs nothing while no step body runs that long."""
    while worker.running:
        await asyncio.sleep(interrupts.POLL_SECONDS)
        run_ids = worker.interrupts.long_running()
        if not run_ids:
            continue
        try:
            ended = await worker.store.read(functools.partial(_ended, run_ids=run_ids))
        except Exception:
            log.exception("checking running steps for cancellation failed; will retry")
            continue
        if ended:
            worker.interrupts.interrupt(ended)


def _ended(tx: Tx, run_ids: list[str]) -> list[str]:
    """Those of `run_ids` that are over (cancelled, or ended by another process)."""
    rows = [tx.get_run(run_id) for run_id in run_ids]
    return [row.id for row in rows if row is not None and row.status not in ("queued", "running")]


async def maintain(worker: Worker) -> None:
    """One maintenance pass: renew the leases of the worker's live sessions (a dead session's
    lease is left to expire) and its rows in the worker registry (`Versioning.refresh`, in
    the same transaction), release expired leases and unblock blocked items (a safety net
    for a missed wake-up), load apps synced through other processes, apply the retention
    policy, and ingest events stored but left unprocessed (by a process that died)."""
    owner, until, wall = worker.owner, worker.lease_until(), wall_ms()
    held, versioning = worker.held_items(), worker.versioning
    released = await worker.store.write(lambda tx: (tx.renew_leases(owner, until, held),
                                                    tx.release_expired_leases(wall),
                                                    tx.unblock_all(),
                                                    versioning.refresh(tx, wall))[1:])
    if any(released):
        worker.wake.set()
    await worker.registrar.load_stored()
    if worker.retention_ms is not None:
        await prune(worker.store, worker.clock, worker.retention_ms)
    before = worker.clock.now() - UNPROCESSED_GRACE_MS
    stale = await worker.store.read(lambda tx: tx.unprocessed_events(before, 500))
    if stale:
        await worker.ingest_stored(stale)


async def reclaim_dead_local_workers(worker: Worker) -> None:
    """Leases held by a dead process on this host are released at once, not after expiry."""
    owners = await worker.store.read(lambda tx: tx.lease_owners())
    dead = dead_local_owners(owners, worker.owner)
    if dead:
        await worker.store.write(lambda tx: [tx.release_leases_of(o) for o in dead])


async def refresh_versions(worker: Worker) -> None:
    """Renew this worker's rows in the worker registry and refresh what a versioned worker may
    adopt (`runtime.versioning`); dead local workers' leases are handed back."""
    versioning, now = worker.versioning, wall_ms()
    if await worker.store.write(lambda tx: versioning.refresh(tx, now)):
        worker.wake.set()


def tune_gc() -> None:
    """Raise the collector's first threshold, if nobody has set it, from 700 to 50,000 objects.

    Thousands of runs parked in memory make every full collection walk a large heap; with the
    default threshold full collections come often enough to stall the loop for hundreds of
    milliseconds right when a herd of sleepers wakes. Opt out with `Engine(tune_gc=False)`."""
    first, *rest = gc.get_threshold()
    if first == DEFAULT_GC_THRESHOLD:
        gc.set_threshold(TUNED_GC_THRESHOLD, *rest)


def retention_ms(value: str | float | datetime.timedelta | None) -> int | None:
    """`Engine(retention=...)` in milliseconds (None: keep everything); at least one day."""
    if value is None:
        return None
    try:
        ms = parse_duration_ms(value, what="retention")
    except ValueError as exc:
        raise ConfigError(f"{exc}; use e.g. retention='7d', or None to keep everything"
                          ) from None
    if ms < MIN_RETENTION_MS:
        raise ConfigError(f"retention {value!r} is too short: keep at least 1 day (events are "
                          "de-duplicated and idempotency keys kept for 24 hours), e.g. "
                          "retention='7d', or retention=None to keep everything")
    return ms


async def prune(store: Store, clock: Clock, keep_ms: int) -> dict[str, int]:
    """Delete what the retention policy no longer keeps, in short transactions."""
    deleted = {"runs": 0, "events": 0, "flow_state": 0}
    for _ in range(PRUNE_ROUNDS):
        now = clock.now()
        counts = await store.write(functools.partial(_prune, cutoff=now - keep_ms, now=now))
        for name, count in zip(deleted, counts, strict=True):
            deleted[name] += count
        if max(counts) < PRUNE_BATCH:
            break
    return deleted


def _prune(tx: Tx, *, cutoff: int, now: int) -> tuple[int, int, int]:
    return tx.prune(cutoff, now, PRUNE_BATCH)


def owner_id() -> str:
    """This process's name on the leases it takes: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def dead_local_owners(owners: list[str], me: str) -> list[str]:
    """The lease owners that were processes on this host which no longer exist."""
    host = socket.gethostname()
    dead = []
    for owner in owners:
        parts = owner.split(":")
        if (len(parts) == 3 and parts[0] == host and parts[1].isdigit() and owner != me
                and not pid_alive(int(parts[1]))):
            dead.append(owner)
    return dead


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
