"""Cooperative cancellation of a step body that is running.

A cancellation is a committed change of the run's status; without this module the run's
executor would only notice it at its next checkpoint, when its lease is gone, after a long step
(an LLM stream, a report that takes ten minutes) had run to its end for nothing. Here the
executors of this process register while they run, so that a cancellation reaches them:

- committed **in this process** (`engine.cancel`, `POST /v1/runs/{id}/cancel`, a `cancel_on`
  event, a timeout, a singleton's `cancel` mode): `Worker._apply` interrupts the run's executor
  as soon as the cancellation commits;
- committed **in another process** (a second worker, `stepwell serve --no-worker`, another
  host on Postgres): `upkeep.cancellation_loop` reads back, about once a second, the status of
  the runs whose step body has been running here for longer than that, and interrupts those
  that have ended.

What an interrupted step sees: `ctx.cancelled` turns True (plain `def` bodies, which run on a
thread, poll it), and the executor's task is cancelled, so an `async def` body gets
`asyncio.CancelledError` at its next `await` (the usual asyncio idiom: `try/finally` cleans
up). Nothing the body returns afterwards is recorded: the run is over.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

# A step body running longer than this has its run's status re-read from the store (another
# process may have cancelled it); the loop that does so runs as often.
POLL_SECONDS = 1.0


@dataclass(slots=True, eq=False)
class LiveRun:
    """One executor running a run in this process."""

    run_id: str
    task: asyncio.Task[object] | None
    cancelled: bool = False
    # The tasks running step bodies now (parallel steps; a plain `def` handler's steps run
    # in tasks of their own), and when the first of them started (time.monotonic()).
    bodies: list[asyncio.Task[object] | None] = field(default_factory=list)
    body_since: float | None = None

    def body_started(self) -> None:
        if not self.bodies:
            self.body_since = time.monotonic()
        self.bodies.append(asyncio.current_task())

    def body_ended(self) -> None:
        self.bodies.remove(asyncio.current_task())
        if not self.bodies:
            self.body_since = None

    def tasks(self) -> set[asyncio.Task[object]]:
        return {task for task in (self.task, *self.bodies) if task is not None}


class Interrupts:
    """The runs executing in this process, by id, so a cancellation can interrupt them."""

    def __init__(self) -> None:
        self._live: dict[str, LiveRun] = {}

    def enter(self, run_id: str) -> LiveRun:
        """Register the executor now running `run_id` (from inside its task)."""
        live = LiveRun(run_id, asyncio.current_task())
        self._live[run_id] = live
        return live

    def leave(self, live: LiveRun) -> None:
        if self._live.get(live.run_id) is live:
            del self._live[live.run_id]

    def interrupt(self, run_ids: list[str]) -> int:
        """The runs `run_ids` ended (cancelled): stop their executors here. The task doing the
        cancelling is never cancelled by it (a run's own code may end another run, or be what
        committed the cancellation). Returns how many executors were interrupted."""
        current = asyncio.current_task()
        count = 0
        for run_id in run_ids:
            live = self._live.get(run_id)
            if live is None or live.cancelled:
                continue
            live.cancelled = True
            count += 1
            for task in live.tasks():
                if task is not current and not task.done():
                    task.cancel(f"run {run_id} was cancelled")
        return count

    def long_running(self, older_than: float = POLL_SECONDS) -> list[str]:
        """Runs with a step body running for more than `older_than` seconds."""
        limit = time.monotonic() - older_than
        return [live.run_id for live in self._live.values()
                if not live.cancelled and live.body_since is not None and live.body_since < limit]
