"""Housekeeping a worker does besides running work: retention (pruning old runs, events and
flow-control state), telling its own leases from a dead process's, and tuning the collector."""

from __future__ import annotations

import datetime
import functools
import gc
import os
import socket
import uuid

from stepwell.core.config import ConfigError
from stepwell.core.durations import parse_duration_ms
from stepwell.runtime.clock import Clock
from stepwell.store.base import Store, Tx

DEFAULT_GC_THRESHOLD, TUNED_GC_THRESHOLD = 700, 50_000
PRUNE_BATCH, PRUNE_ROUNDS = 500, 20      # rows per table per transaction; rounds per call
MIN_RETENTION_MS = 24 * 3600 * 1000      # event de-duplication and idempotency keep 24 h


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
