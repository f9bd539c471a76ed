"""The worker: what runs behind the public `Engine`, one per engine.

It owns the store, the clock, the thread pools and the HTTP clients, and it is the executors'
host (`driver.Host`): sessions, queue-item handlers (`items`), faults and checkpoints commit
through `Worker.commit`, which runs a transaction script and then applies the `Effects` it
asked for (`Worker._apply`: sessions for the runs it leased, events it stored to ingest, waiters
to wake). Its loop (`_work_loop`) claims due work and starts a session per item; maintenance
(`upkeep.maintenance_loop`) renews its leases and picks up stray work; apps arrive through its
`Registrar`.

Nothing here is public: the service layer, the CLI and tests reach it as `Engine._worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from types import CodeType
from typing import Any, TypeVar

import httpx

from stepwell.core.config import ConfigError
from stepwell.core.models import Event
from stepwell.core.protocol import validate_signing_key
from stepwell.core.storage import StorageFailure
from stepwell.core.urlpolicy import AppUrlPolicy
from stepwell.runtime import (
    admission,
    checkpoint,
    items,
    runlog,
    scripts,
    sdkclient,
    tracing,
    upkeep,
)
from stepwell.runtime.clock import Clock, SystemClock, wall_ms
from stepwell.runtime.interrupts import Interrupts
from stepwell.runtime.registration import Registrar
from stepwell.runtime.registry import Registry
from stepwell.runtime.remote import RemoteFunction, RemoteSettings
from stepwell.runtime.scripts import Effects, Placement, Routing
from stepwell.runtime.stats import Stats, backlog
from stepwell.runtime.streams import StreamHub
from stepwell.runtime.threads import StepThreads
from stepwell.runtime.versioning import Versioning
from stepwell.runtime.watchdog import LoopWatchdog
from stepwell.sdk.app import App, Function
from stepwell.store import open_store
from stepwell.store.base import ClaimVersions, QueueItem, RunState, Tx
from stepwell.store.sqlite import SqliteStore

R = TypeVar("R")
log = logging.getLogger("stepwell.engine")
PREFETCH_BATCH = 1_000        # timers leased ahead per claim (keeps claim transactions short)


class Worker:
    """The engine's machinery; its arguments are the `Engine`'s (documented there), except
    `executes`, the engine's `worker` flag: whether this process claims and runs work."""

    def __init__(self, apps: tuple[App, ...], *, db: str, clock: Clock | None, executes: bool,
                 lease_seconds: float, max_concurrency: int, fsync: bool, sync_threads: int,
                 poll_seconds: float, signing_key: str | None, sdk_timeout_seconds: float,
                 retry_interval_seconds: float | None, prefetch_seconds: float,
                 max_parked: int, tune_gc: bool, sdk_concurrency: int,
                 retention: str | float | datetime.timedelta | None,
                 app_url_allow: str | Sequence[str] | None,
                 block_warning_seconds: float | None,
                 check_determinism: bool | None, tracer_provider: Any = None,
                 otlp_endpoint: str | None = None) -> None:
        self.registry = Registry(apps)
        # How SDK apps are called: signed (production mode) when a signing key is given.
        if signing_key is not None:
            signing_key = validate_signing_key(signing_key)
        self.remote_settings = RemoteSettings(
            signing_key=signing_key, server_kind="cloud" if signing_key else "dev",
            timeout_s=sdk_timeout_seconds, app_urls=AppUrlPolicy.parse(app_url_allow))
        self._http: httpx.AsyncClient | None = None
        # Calls to SDK apps: at most this many in flight per app, queued in order (sdkclient).
        if sdk_concurrency < 1:
            raise ConfigError(f"sdk_concurrency must be at least 1, got {sdk_concurrency}")
        self.sdk_concurrency = sdk_concurrency
        self._app_clients: sdkclient.AppClients | None = None
        self.inflight = checkpoint.Inflight()          # SDK calls that may be checkpointed
        self.db = db
        self.store = open_store(db, fsync=fsync)
        self.clock: Clock = clock or SystemClock()
        self.registrar = Registrar(self.registry, self.store, self.clock,
                                   self.remote_settings.app_urls)
        self.executes = executes
        self.owner = upkeep.owner_id()
        self.lease_ms = int(lease_seconds * 1000)
        self.versioning = Versioning(self.owner, apps, dict(self.registry.native), self.lease_ms)
        self.max_concurrency = max_concurrency
        self.poll_seconds = poll_seconds
        # Timers (runs that only sleep or back off) due within this horizon are leased ahead,
        # loaded and replayed, and resumed in memory at their instant, and a run that sleeps
        # for less than it stays in memory: that is how a herd of sleepers all due at once
        # wakes on time. Parked runs do not count toward `max_concurrency`; at most
        # `max_parked` of them are held (memory), the rest take the ordinary path. 0 disables.
        self.prefetch_ms = max(0, int(prefetch_seconds * 1000))
        self.max_parked = max_parked
        self._parked: dict[object, int] = {}          # token -> the instant it waits for
        self.tune_gc = tune_gc
        self.stats = Stats()
        self.tracing = tracing.configure(tracer_provider, otlp_endpoint)
        # Finished runs (with their steps), the events nothing refers to any more, and expired
        # flow-control state are deleted this long after they ended / arrived. None keeps all.
        self.retention_ms = upkeep.retention_ms(retention)
        self.sync_threads = sync_threads
        # None: exponential backoff with jitter (production); a number: a fixed linear step,
        # as `inngest dev --retry-interval` offers for quick local loops.
        self.retry_interval_ms = (None if retry_interval_seconds is None
                                  else int(retry_interval_seconds * 1000))
        self.step_pool = StepThreads(1, "stepwell-step")
        self.handler_pool: Executor = ThreadPoolExecutor(1)
        # Each session task and the queue item it works on (only those leases are renewed).
        self._sessions: dict[asyncio.Task[None], int] = {}
        self.interrupts = Interrupts()           # runs executing here, for cancellations
        self.streams = StreamHub()               # this process's stream subscribers
        self._background: set[asyncio.Task[Any]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.wake = asyncio.Event()
        self.finished: dict[str, asyncio.Event] = {}  # run id -> set when it ends (Engine.wait)
        self.running = False
        self.orphans_logged: set[str] = set()     # functions whose runs no one here can run
        # Replay every native run from its memos at each suspension and at its end, and fail
        # it on a divergence (see runtime/determinism.py). None: on under the virtual clock
        # (stepwell.testing); `stepwell dev` turns it on; production leaves it off.
        self.check_determinism = (bool(getattr(self.clock, "virtual", False))
                                  if check_determinism is None else check_determinism)
        # User code holding the event loop longer than this is reported (once per place).
        self._watchdog = None if block_warning_seconds is None else LoopWatchdog(
            block_warning_seconds, self._handler_owners)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database (migrating it), load the apps, arm the crons, and start the loops
        (with `executes`)."""
        if self.running:
            return
        if isinstance(self.store, SqliteStore) and self.store.path != ":memory:":
            Path(self.store.path).parent.mkdir(parents=True, exist_ok=True)
        await self.store.open()
        if self.tune_gc:
            upkeep.tune_gc()
        # Two pools: sync handlers block their thread while waiting on their steps, so sharing
        # one pool with the step callables could deadlock. Made here so a stopped engine can
        # start again.
        self.step_pool = StepThreads(self.sync_threads, "stepwell-step")
        self.handler_pool = ThreadPoolExecutor(self.sync_threads, thread_name_prefix="stepwell-fn")
        self.running = True
        if self._watchdog is not None:
            self._watchdog.start(asyncio.get_running_loop())
        attach = getattr(self.clock, "attach", None)
        if attach is not None:
            attach(self)            # a virtual clock drives the worker: idle(), next_due_at()
        await self.registrar.load_stored()
        await self.registrar.arm_crons()
        if self.executes:
            # Backends shared by several processes (Postgres) announce work queued elsewhere.
            subscribe = getattr(self.store, "on_ready_work", None)
            if subscribe is not None:
                subscribe(self.wake.set)
            await upkeep.reclaim_dead_local_workers(self)
            await upkeep.refresh_versions(self)
            self._tasks = [asyncio.create_task(self._work_loop(), name="stepwell-worker"),
                           asyncio.create_task(upkeep.maintenance_loop(self),
                                               name="stepwell-maintenance"),
                           asyncio.create_task(upkeep.cancellation_loop(self),
                                               name="stepwell-cancellations")]

    async def stop(self) -> None:
        """Stop claiming work and hand the runs in progress back (see `Engine.stop`)."""
        if not self.running:
            return
        self.running = False
        self.wake.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in list(self._sessions) + list(self._background):
            task.cancel()
        await asyncio.gather(*self._sessions, *self._background, return_exceptions=True)
        if self.executes:
            # Hand back what this process held so another (or the next) process resumes it now
            # rather than after the lease expires.
            owner = self.owner
            with contextlib.suppress(Exception):
                await self.store.write(lambda tx: (tx.release_leases_of(owner),
                                                   tx.remove_workers([owner])))
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._app_clients is not None:
            await self._app_clients.aclose()
            self._app_clients = None
        detach = getattr(self.clock, "detach", None)
        if detach is not None:
            detach(self)
        await self.store.close()
        self.step_pool.shutdown(wait=False, cancel_futures=True)
        self.handler_pool.shutdown(wait=False, cancel_futures=True)
        if self._watchdog is not None:
            self._watchdog.stop()
        self.tracing.close()

    def _handler_owners(self) -> dict[CodeType, str]:
        """Each native handler's code object -> its function's id (for the watchdog)."""
        owners: dict[CodeType, str] = {}
        for qualified, fn in self.registry.native.items():
            code = getattr(fn.handler, "__code__", None)
            if isinstance(code, CodeType):
                owners[code] = qualified
        return owners

    # --- the Host interface used by sessions -------------------------------------------------

    def lease_until(self) -> int:
        return wall_ms() + self.lease_ms

    def active(self) -> int:
        """Sessions doing work (those parked until an instant excepted)."""
        return len(self._sessions) - len(self._parked)

    def held_items(self) -> list[int]:
        """The queue items of the live sessions: the leases maintenance renews."""
        return list(self._sessions.values())

    def may_park(self, when: int) -> bool:
        """Whether a run may wait in memory until `when` rather than hand its item back."""
        return (when - self.clock.now() <= self.prefetch_ms
                and len(self._parked) < self.max_parked)

    async def park_until(self, when: int) -> None:
        """Wait in memory until `when` (on the engine's clock), holding the run's lease."""
        token = object()
        self._parked[token] = when
        try:
            while self.clock.now() < when:
                await self.clock.sleep_until(when)
        finally:
            del self._parked[token]

    def _placement(self) -> Placement:
        capacity = self.max_concurrency - self.active() if self.executes else 0
        return Placement(self.owner if self.executes else None, self.clock.now(),
                         self.lease_until(), max(capacity, 0))

    async def commit(self, fn: Callable[[Tx, Placement, Effects], R]) -> R:
        """Run a script in a write transaction, then act on what it asked for."""

        def script(tx: Tx) -> tuple[R, Effects]:
            effects = Effects()
            return fn(tx, self._placement(), effects), effects

        value, effects = await self.store.write(script)
        self._apply(effects)
        return value

    async def read(self, fn: Callable[[Tx], R]) -> R:
        return await self.store.read(fn)

    @property
    def routing(self) -> Routing:
        return self.registry.routing

    def find_function(self, ref: object) -> Function | RemoteFunction | None:
        return self.registry.find(ref)

    @property
    def routes_events(self) -> bool:
        """Whether this engine routes the events it receives itself. A process that only sends
        events (no worker, no functions of its own: `Engine(db=..., worker=False)`, `stepwell
        serve --no-worker`) leaves that to the workers, which know the functions: its events
        are stored unrouted and the first worker to claim them routes them, even one that
        starts later. Routing them here, with no functions, would drop them silently."""
        return self.executes or bool(self.registry.native)

    # --- official-SDK apps -------------------------------------------------------------------

    async def checkpoint_async(self, run_id: str, body: object) -> int:
        """Apply an SDK's `POST /v1/checkpoint/{run_id}/async`: commit the step results it
        ran inside our call, under the lease of the worker making that call. Returns how many
        were new. Raises checkpoint.CheckpointError (StaleDispatch once the lease is gone)."""
        cp = checkpoint.parse_checkpoint(run_id, body)
        executor = self.inflight.get(run_id)
        try:
            if (executor is not None and executor.item_id == cp.ref.item_id
                    and cp.ref.owner == self.owner):
                stored = await executor.accept_checkpoint(cp)
            elif cp.results:
                state, memos = await self.commit(checkpoint.commit_elsewhere(
                    cp, self.clock.now(), self.lease_until()))
                stored = len(memos)
                for memo in memos if self.tracing.enabled else ():
                    # The call's span is another process's: these hang on the run span.
                    self.tracing.step_attempt(state, state.run.function_id, memo.hash,
                                              memo.step_id, memo.attempts - 1, memo.started_at,
                                              memo.ended_at, None, final=True)
            else:
                stored = 0
        except scripts.LeaseLost as exc:
            raise checkpoint.StaleDispatch(
                f"run {run_id}: the call being checkpointed no longer holds the run "
                f"(cancelled, ended or taken over): {exc}") from None
        self.stats.sdk_checkpoints += 1
        return stored

    def http_client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = sdkclient.nodelay_client(timeout=self.remote_settings.timeout_s,
                                                  connections=100)
        return self._http

    def app_clients(self) -> sdkclient.AppClients:
        if self._app_clients is None:
            self._app_clients = sdkclient.AppClients(limit=self.sdk_concurrency,
                                                     timeout=self.remote_settings.timeout_s)
        return self._app_clients

    # --- effects: what a committed script asked for -------------------------------------------

    def _apply(self, effects: Effects) -> None:
        for dispatch in effects.dispatch:
            self._spawn_session(items.run_dispatch(self, dispatch), dispatch.item_id)
        if effects.emitted:
            self._spawn_background(self.ingest_stored(effects.emitted))
        if effects.wake:
            self.wake.set()
        self.stats.count(effects)
        if effects.resolved and self.tracing.enabled:
            self._spawn_background(tracing.trace_resolved(self, effects.resolved))
        if effects.unsuccessful:
            cancelled = [u[0] for u in effects.unsuccessful if u[2] == "cancelled"]
            if cancelled:
                self.interrupts.interrupt(cancelled)    # step bodies running here stop
                if self.tracing.enabled:
                    self._spawn_background(tracing.trace_cancelled(self, cancelled))
        for run_id, function_id, status, error in effects.unsuccessful:
            spec = self.routing.functions.get(function_id)
            runlog.run_ended(run_id, spec.public_id if spec else function_id, status, error)
        for run_id in effects.finished_runs:
            waiter = self.finished.get(run_id)
            if waiter is not None:
                waiter.set()

    def _spawn_session(self, coro: Any, item_id: int) -> None:
        task = asyncio.create_task(coro)
        self._sessions[task] = item_id
        task.add_done_callback(self._session_done)

    def _session_done(self, task: asyncio.Task[None]) -> None:
        self._sessions.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("run session crashed", exc_info=task.exception())
        self.wake.set()

    def _spawn_background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed", exc_info=task.exception())

    async def ingest_stored(self, events: list[Event]) -> None:
        """Process events already stored (emitted by runs, or left by a dead process). If that
        fails for a reason other than the database's condition, each is processed alone, and
        one that still fails is kept but marked processed: otherwise it would be tried again
        by every upkeep pass, forever, holding back the events stored with it."""
        now, routing = self.clock.now(), self.routing
        try:
            await self.commit(lambda tx, place, effects: admission.ingest_events(
                tx, events, now, routing, place, effects, already_stored=True))
            return
        except StorageFailure:
            raise                       # nothing is wrong with the events: upkeep retries
        except Exception:
            if len(events) > 1:
                for event in events:
                    await self.ingest_stored([event])
                return
            log.exception("event %s (%s) cannot be processed: it is kept, but starts no run "
                          "and resolves no wait", events[0].id, events[0].name)
        event_id = events[0].id
        await self.store.write(lambda tx: tx.mark_event_processed(event_id))

    # --- idle detection (tests, VirtualClock) ------------------------------------------------

    async def idle(self) -> None:
        """Wait (in real time) until no work is running or ready."""
        quiet = 0
        while quiet < 2:
            now = self.clock.now()
            parked = sum(1 for when in self._parked.values() if when > now)
            busy = bool(len(self._sessions) > parked or self._background
                        or self.store.pending_writes())
            if not busy:
                busy = await self.store.read(self._count_ready) > 0
                if busy:
                    self.wake.set()
            quiet = 0 if busy else quiet + 1
            await asyncio.sleep(0.001)

    def _count_ready(self, tx: Tx) -> int:
        return tx.count_ready(self.clock.now())

    async def next_due_at(self) -> int | None:
        """The earliest instant something is scheduled for (queued or parked in memory)."""
        due = await self.store.read(lambda tx: tx.next_due_at())
        parked = min(self._parked.values(), default=None)
        return _earliest(due, parked)

    async def metrics(self) -> dict[str, object]:
        """This process's counters (since it started) and the shared queue's state now."""
        now = self.clock.now()

        def queue(tx: Tx) -> tuple[int, int | None, list[tuple[str, str | None, int, int]]]:
            return tx.count_ready(now), tx.next_due_at(), tx.run_backlog(now)

        ready, next_due, waiting = await self.store.read(queue)
        stats = self.stats
        functions, keys = backlog(waiting, now)
        return {
            "runs_started": dict(stats.runs_started),
            "function_runs_finished": dict(stats.function_runs_finished),
            "function_step_seconds": dict(stats.function_step_seconds),
            "model_tokens": dict(stats.model_tokens),
            "backlog": functions, "concurrency_backlog": keys,
            "events_received": stats.events_received, "runs_created": stats.runs_created,
            "runs_finished": dict(stats.runs_finished),
            "steps_committed": dict(stats.steps_committed),
            "step_attempts_failed": stats.step_attempts_failed,
            "sdk_calls": stats.sdk_calls, "sdk_checkpoints": stats.sdk_checkpoints,
            "step_seconds": stats.step_seconds, "queue_wait_seconds": stats.queue_wait_seconds,
            "sessions_active": self.active(), "runs_parked": len(self._parked),
            "queue_ready": ready,
            # How late the oldest ready item is: work waiting for a free worker.
            "queue_lag_seconds": 0.0 if next_due is None or next_due > now or not ready
            else (now - next_due) / 1000,
        }

    # --- the worker loop ---------------------------------------------------------------------

    async def _work_loop(self) -> None:
        while self.running:
            self.wake.clear()
            room = self.max_concurrency - self.active()
            ahead = min(self.max_parked - len(self._parked), PREFETCH_BATCH
                        ) if self.prefetch_ms else 0
            claimed: list[QueueItem] = []
            if room > 0 or ahead > 0:
                now = self.clock.now()
                claim = functools.partial(_claim, now=now, owner=self.owner,
                                          lease_until=self.lease_until(), limit=max(room, 0),
                                          until=now + self.prefetch_ms, ahead=max(ahead, 0),
                                          versions=self.versioning.claim)
                try:
                    claimed = await self.store.write(claim)
                except Exception:
                    log.exception("claiming work failed; retrying")
                # The claimed runs' states are loaded in one read, shared by their sessions.
                run_ids = [i.run_id for i in claimed if i.kind == "exec" and i.run_id is not None]
                states = asyncio.ensure_future(self.store.read(
                    functools.partial(_load_states, run_ids=run_ids))) if run_ids else None
                for item in claimed:
                    if item.due_at <= now:       # not a timer leased ahead
                        self.stats.queue_wait_seconds.observe((now - item.due_at) / 1000)
                    self._spawn_session(items.handle(self, item, states), item.id)
            if claimed:
                await asyncio.sleep(0)
                continue
            await self._sleep_until_due(room > 0, ahead > 0)

    async def _sleep_until_due(self, ready: bool, timers: bool) -> None:
        """Until work is due (ready items if there is room, timers a horizon ahead if more may
        be parked), new work is announced, or a poll interval passes."""
        horizon = self.prefetch_ms

        def wake_at(tx: Tx) -> int | None:
            due = tx.next_due_at() if ready else None
            timer = tx.next_timer_at() if timers else None
            ahead = None if timer is None else timer - horizon
            return _earliest(due, ahead)

        try:
            due = await self.store.read(wake_at) if ready or timers else None
        except Exception:
            due = None
        if due is not None and self.versioning.claim is not None and due <= self.clock.now():
            # Due work this versioned worker just did not claim is another version's (see
            # runtime.versioning): wait for news or the poll, not spin on it.
            due = None
        waits: list[asyncio.Task[Any]] = [asyncio.create_task(self.wake.wait())]
        if due is not None:
            waits.append(asyncio.create_task(self.clock.sleep_until(due)))
        try:
            await asyncio.wait(waits, timeout=self.poll_seconds,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()


def _earliest(*instants: int | None) -> int | None:
    return min((t for t in instants if t is not None), default=None)


def _load_states(tx: Tx, *, run_ids: list[str]) -> dict[str, RunState]:
    return tx.load_run_states(run_ids)


def _claim(tx: Tx, *, now: int, owner: str, lease_until: int, limit: int, until: int,
           ahead: int, versions: ClaimVersions | None) -> list[QueueItem]:
    found = admission.claim(tx, now, owner, lease_until, limit,
                            versions=versions) if limit > 0 else []
    if ahead > 0:
        found += tx.claim_timers(until, owner, lease_until, ahead, versions=versions)
    return found
