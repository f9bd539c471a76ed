"""Versioned workers: a worker serves one version of its app, and claims only the runs of that
version, unless a run's function allows moving it to newer code (`upgrade="auto"`).

Why: a run that sleeps for a week replays its history against whatever code claims it when it
wakes. During a deploy two versions run side by side; the safe default is that a run stays on
the code it started on while that code still runs somewhere (old workers *drain* their runs, new
workers take the new runs). When no live worker of its version is left, an `"auto"` run moves
to a live worker's code, but only after its recorded history replays cleanly against that code
(the deploy check, `runtime.determinism`, run in this process on the run's own history); a run
that would diverge stays where it is, marked with a warning, for a worker of its version to
finish. A `"pinned"` run never moves: it waits for a worker of its version (`stepwell versions`
shows such a version as *stranded* while it has runs and no worker).

`"auto"` is the default because it never strands a run whose code is compatible and never moves
one that is not; a team that wants Temporal-style pinning (a run finishes on the exact code it
started on, whatever the check says) opts in per function or per app.

A worker is versioned when one of its apps sets `App(version=...)`: then the claim SQL checks
each exec item's run version (`ClaimVersions`). An unversioned worker claims any run, as before
versions existed, with the same SQL (no extra cost). Every worker that executes registers in
the worker registry (`WorkerRow`) and renews its rows from the maintenance loop; rows of a
process that died are removed at once when it ran on this host (its pid is gone), else once
they were not renewed for `EXPIRY_LEASES` lease periods.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

from stepwell.runtime.clock import wall_ms
from stepwell.runtime.history import History, replay_history
from stepwell.runtime.upkeep import pid_alive
from stepwell.sdk.app import App, Function
from stepwell.store.base import ClaimVersions, RunState, Tx, WorkerRow

if TYPE_CHECKING:
    from stepwell.runtime.worker import Worker

log = logging.getLogger("stepwell.engine")

EXPIRY_LEASES = 3               # a worker silent for this many lease periods is dead


def moved_warning(old: str | None, new: str) -> str:
    """The run's mark when it moved to newer code."""
    return (f"version: moved from {old} to {new} (no live worker of {old} was left and the "
            "run's history replayed cleanly on the new code)")


def stays_warning(old: str | None, new: str, divergence: str) -> str:
    """The run's mark when its history diverges from a newer version's code."""
    return (f"version: stays on {old}: its history diverges from {new}'s code ({divergence}); "
            f"it waits for a worker of {old}")


class Versioning:
    """One worker's versions: its registry rows, and what it may claim (`claim`, None for an
    unversioned worker). `adopt` is refreshed by each maintenance pass (`refresh`)."""

    def __init__(self, worker_id: str, apps: tuple[App, ...],
                 functions: dict[str, Function], lease_ms: int) -> None:
        self.worker_id = worker_id
        self.versioned = any(app.version is not None for app in apps)
        self.expiry_ms = EXPIRY_LEASES * lease_ms
        self.functions = functions
        self.own = tuple(sorted((qid, fn.spec.version) for qid, fn in functions.items()
                                if fn.spec.version is not None))
        self.pairs = sorted({(fn.app.id, version) for qid, fn in functions.items()
                             for version in [fn.spec.version] if version is not None})
        self.started_at = wall_ms()
        self.claim: ClaimVersions | None = ClaimVersions(self.own) if self.versioned else None
        self.refused: set[str] = set()       # runs whose history diverges from this code

    def rows(self, now: int) -> list[WorkerRow]:
        host, pid = socket.gethostname(), os.getpid()
        return [WorkerRow(self.worker_id, app_id, version, host, pid, self.started_at, now)
                for app_id, version in self.pairs]

    def refresh(self, tx: Tx, now: int) -> bool:
        """One registry pass, in a write: renew this worker's rows (registering them again if
        they were expired), remove dead workers' rows (and hand back the leases of those that
        ran on this host), and recompute which old versions' runs this worker may adopt.
        Returns whether leases were released (work to claim)."""
        if self.pairs and tx.heartbeat_worker(self.worker_id, now) == 0:
            tx.register_workers(self.rows(now))
        tx.expire_workers(now - self.expiry_ms)
        host = socket.gethostname()
        workers = tx.list_workers()
        dead = sorted({row.id for row in workers if row.host == host
                       and row.id != self.worker_id and not pid_alive(row.pid)})
        released = 0
        if dead:
            tx.remove_workers(dead)
            released = sum(tx.release_leases_of(owner) for owner in dead)
        if self.claim is not None:
            alive = [row for row in workers if row.id not in dead]
            adopt = self._adoptable(tx, alive)
            self.claim = ClaimVersions(self.own, adopt, tuple(sorted(self.refused)) if adopt
                                       else ())
        return released > 0

    def _adoptable(self, tx: Tx, workers: list[WorkerRow]) -> tuple[tuple[str, str], ...]:
        """(function, version) of unfinished runs this worker may take over: an `auto` function
        here, another version, and no live worker of that version of the app (`workers`: the
        registry's live rows, read once per pass)."""
        auto = {qid: fn for qid, fn in self.functions.items() if fn.spec.upgrade == "auto"}
        if not auto:
            return ()
        live = {(row.app_id, row.version) for row in workers}
        return tuple((qid, version) for qid, version, _, _ in tx.active_versions()
                     if qid in auto and version is not None
                     and version != auto[qid].spec.version
                     and (auto[qid].app.id, version) not in live)

    def refuse(self, run_id: str) -> None:
        """This code diverges from the run's history: claim it no more (the same code always
        diverges on the same history, and the history cannot move without its own version)."""
        self.refused.add(run_id)
        if self.claim is not None:
            self.claim = ClaimVersions(self.claim.own, self.claim.adopt,
                                       tuple(sorted(self.refused)))

    def may_adopt(self, function_id: str, version: str) -> bool:
        return self.claim is not None and (function_id, version) in self.claim.adopt


async def admit(worker: Worker, item_id: int, state: RunState, fn: Function) -> bool:
    """Whether this (versioned) worker may drive this run now. A run of its function's version
    (or of none) goes on; one of an older version it may adopt is replayed against this code
    first and moved (its version updated) if clean, else refused (this worker claims it no
    more); a run it may not take is handed back, due now, for a worker of its version (this
    worker's claims skip it)."""
    versioning, run = worker.versioning, state.run
    new = fn.spec.version
    if run.version is None or new is None or run.version == new:
        return True
    owner, now, old = worker.owner, worker.clock.now(), run.version
    if not versioning.may_adopt(run.function_id, old):
        await worker.store.write(lambda tx: tx.release_item(item_id, owner, now, now))
        return False
    replayed = await replay_history(fn, History.from_state(state), worker.handler_pool)
    if replayed.divergence is not None:
        found = replayed.divergence
        text = stays_warning(old, new, f"step {found.step_id!r}: {found.kind}")
        if run.id not in versioning.refused:
            versioning.refuse(run.id)
            log.warning("run %s of %s stays on version %s: its history diverges from this "
                        "code (%s) at step %r", run.id, run.function_id, old, found.kind,
                        found.step_id)

        def stay(tx: Tx) -> None:
            tx.add_run_warning(run.id, text)
            tx.release_item(item_id, owner, now, now)

        await worker.store.write(stay)
        return False

    def move(tx: Tx) -> bool:
        if not tx.move_run_version(run.id, old, new):
            tx.release_item(item_id, owner, now, now)
            return False
        tx.add_run_warning(run.id, moved_warning(old, new))
        return True

    if not await worker.store.write(move):
        return False
    log.info("run %s of %s moved from version %s to %s", run.id, run.function_id, old, new)
    run.version = new
    run.warnings.append(moved_warning(old, new))
    return True
