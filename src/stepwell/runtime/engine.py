"""The engine: owns the store, the clock, the worker loop and the run sessions.

One `Engine` per process. It ingests events, leases due queue items (its own new runs directly,
without a polling round trip), drives each run with a `RunSession`, fires timers and cron ticks,
renews its leases and reclaims those of dead workers.
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
from stepwell.core.models import (
    TERMINAL_STATUSES,
    Event,
    Run,
    RunStatus,
    normalize_send,
)
from stepwell.core.protocol import (
    ProtocolError,
    Registration,
    parse_registration,
    validate_signing_key,
)
from stepwell.core.storage import StorageFailure
from stepwell.core.urlpolicy import AppUrlPolicy
from stepwell.core.urls import DEFAULT_DB
from stepwell.runtime import (
    admission,
    checkpoint,
    items,
    runlog,
    scripts,
    sdkclient,
    signals,
    upkeep,
)
from stepwell.runtime.checkpoint import CheckpointError as CheckpointError  # for the service
from stepwell.runtime.clock import Clock, SystemClock, wall_ms
from stepwell.runtime.registry import Registry, registration_checksum
from stepwell.runtime.remote import RemoteFunction, RemoteSettings
from stepwell.runtime.scripts import Effects, Placement, Routing
from stepwell.runtime.stats import Stats
from stepwell.runtime.threads import StepThreads
from stepwell.runtime.views import run_view
from stepwell.runtime.watchdog import LoopWatchdog
from stepwell.sdk.app import App, Function
from stepwell.sdk.step import check_event_data
from stepwell.store.base import QueueItem, RunState, Store, Tx
from stepwell.store.sqlite import SqliteStore

R = TypeVar("R")
log = logging.getLogger("stepwell.engine")
UNPROCESSED_GRACE_MS = 5_000
PREFETCH_BATCH = 1_000        # timers leased ahead per claim (keeps claim transactions short)


def open_store(url: str, *, fsync: bool = True) -> Store:
    """The backend for a database URL."""
    if url.startswith("sqlite:") or "://" not in url:
        return SqliteStore(url, fsync=fsync)
    if url.startswith(("postgres://", "postgresql://")):
        from stepwell.store.postgres import PostgresStore  # psycopg only when it is used

        return PostgresStore(url, fsync=fsync)
    raise ConfigError(f"unsupported database URL {url!r}; use sqlite:///path.db or "
                      "postgresql://user@host:port/db")


class Engine:
    """Runs the functions of one or more apps on a database; use it as `async with engine:`.

    `db` is `sqlite:///path.db` (default: a file under `.stepwell/`) or a `postgresql://` URL.
    `clock` is a `stepwell.testing.VirtualClock` in tests. `worker=False` makes a process that
    sends events and reads runs without executing any. `retention` is how long finished runs and
    old events are kept ("7d" by default, at least "1d"; None keeps everything). The other
    arguments tune the runtime: `lease_seconds` (how long a dead worker's runs wait before
    another takes them), `max_concurrency` (runs executing at once), `sync_threads` (for sync
    handlers and steps), `prefetch_seconds` and `max_parked` (timers resumed ahead of time),
    `retry_interval_seconds` (a linear retry backoff, for development), `signing_key` and
    `sdk_timeout_seconds` (calls to apps on the official SDKs).
    """

    def __init__(self, *apps: App, db: str | None = None, clock: Clock | None = None,
                 worker: bool = True, lease_seconds: float = 30.0, max_concurrency: int = 1000,
                 fsync: bool = True, sync_threads: int = 64, poll_seconds: float = 1.0,
                 signing_key: str | None = None, sdk_timeout_seconds: float = 300.0,
                 retry_interval_seconds: float | None = None, prefetch_seconds: float = 5.0,
                 max_parked: int = 20_000, tune_gc: bool = True,
                 sdk_concurrency: int = sdkclient.DEFAULT_LIMIT,
                 retention: str | float | datetime.timedelta | None = "7d",
                 app_url_allow: str | Sequence[str] | None = None,
                 block_warning_seconds: float | None = 1.0,
                 check_determinism: bool | None = None) -> None:
        self.apps = list(apps)
        self.registry = Registry(apps)
        self.functions: dict[str, Function] = self.registry.native
        self._typed = [fn for fn in self.functions.values() if fn.event_types]
        # How SDK apps are called: signed (production mode) when a signing key is given.
        if signing_key is not None:
            signing_key = validate_signing_key(signing_key)
        self.remote_settings = RemoteSettings(
            signing_key=signing_key, server_kind="cloud" if signing_key else "dev",
            timeout_s=sdk_timeout_seconds, app_urls=AppUrlPolicy.parse(app_url_allow))
        self.registrations = 0                         # SDK registrations received
        self.last_registration: dict[str, str] = {}    # app URL -> app id
        self.last_app_id: str | None = None
        self._http: httpx.AsyncClient | None = None
        # Calls to SDK apps: at most this many in flight per app, queued in order (sdkclient).
        if sdk_concurrency < 1:
            raise ConfigError(f"sdk_concurrency must be at least 1, got {sdk_concurrency}")
        self.sdk_concurrency = sdk_concurrency
        self._app_clients: sdkclient.AppClients | None = None
        self.inflight = checkpoint.Inflight()          # SDK calls that may be checkpointed
        self.db = db or DEFAULT_DB
        self.store = open_store(self.db, fsync=fsync)
        self.clock: Clock = clock or SystemClock()
        self.worker = worker
        self.owner = upkeep.owner_id()
        self.lease_ms = int(lease_seconds * 1000)
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
        self._background: set[asyncio.Task[Any]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._finished: dict[str, asyncio.Event] = {}
        self._running = False
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

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the database (migrating it) and start the workers and timers; `async with`
        calls it."""
        if self._running:
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
        self._running = True
        if self._watchdog is not None:
            self._watchdog.start(asyncio.get_running_loop())
        attach = getattr(self.clock, "attach", None)
        if attach is not None:
            attach(self)
        await self._load_apps()
        await self._register_crons()
        if self.worker:
            # Backends shared by several processes (Postgres) announce work queued elsewhere.
            subscribe = getattr(self.store, "on_ready_work", None)
            if subscribe is not None:
                subscribe(self._wake.set)
            await self._reclaim_dead_local_workers()
            self._tasks = [asyncio.create_task(self._work_loop(), name="stepwell-worker"),
                           asyncio.create_task(self._maintenance_loop(),
                                               name="stepwell-maintenance")]

    async def stop(self) -> None:
        """Stop claiming work and hand the runs in progress back (their leases are released,
        so they resume at once elsewhere or at the next start); `async with` calls it."""
        if not self._running:
            return
        self._running = False
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in list(self._sessions) + list(self._background):
            task.cancel()
        await asyncio.gather(*self._sessions, *self._background, return_exceptions=True)
        if self.worker:
            # Hand back what this process held so another (or the next) process resumes it now
            # rather than after the lease expires.
            owner = self.owner
            with contextlib.suppress(Exception):
                await self.store.write(lambda tx: tx.release_leases_of(owner))
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

    def _handler_owners(self) -> dict[CodeType, str]:
        """Each native handler's code object -> its function's id (for the watchdog)."""
        owners: dict[CodeType, str] = {}
        for qualified, fn in self.functions.items():
            code = getattr(fn.handler, "__code__", None)
            if isinstance(code, CodeType):
                owners[code] = qualified
        return owners

    # --- the Host interface used by sessions -------------------------------------------------

    def lease_until(self) -> int:
        return wall_ms() + self.lease_ms

    def _active(self) -> int:
        """Sessions doing work (those parked until an instant excepted)."""
        return len(self._sessions) - len(self._parked)

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
        capacity = self.max_concurrency - self._active() if self.worker else 0
        return Placement(self.owner if self.worker else None, self.clock.now(),
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

    # --- official-SDK apps -------------------------------------------------------------------

    async def register_app(self, body: dict[str, Any]) -> dict[str, Any]:
        """Apply an SDK app's registration (`POST /fn/register`): validate every function,
        store the app, and start routing events to it. Raises ProtocolError on a bad body."""
        # Hashing and validating a registration is CPU work proportional to its size (up to
        # 1,000 functions): done on a thread so the event loop keeps serving, and skipped when
        # the app is already loaded with this exact registration (every SDK re-sync).
        if not isinstance(body, dict):
            raise ProtocolError("registration body must be a JSON object")
        checksum = await asyncio.to_thread(registration_checksum, body)
        app_id = body.get("appName")
        if isinstance(app_id, str) and self.registry.checksums.get(app_id) == checksum:
            registration = self.registry.loaded[app_id]
        else:
            parsed = await asyncio.to_thread(parse_registration, body)
            registration = self.registry.load_app(body, checksum, parsed,
                                                  check=self._check_app_urls)
        now = self.clock.now()
        modified = await self.store.write(lambda tx: tx.save_app(
            registration.app_id, registration.url, body, checksum, now))
        await self._register_crons()
        self.registrations += 1
        self.last_registration[registration.url.rstrip("/")] = registration.app_id
        self.last_app_id = registration.app_id
        return {"ok": True, "modified": modified, "app_id": registration.app_id,
                "functions": [f.spec.id for f in registration.functions]}

    def _check_app_urls(self, registration: Registration) -> None:
        """With an app URL allow-list, every URL an app registers (its serve URL and each
        function's step URL) must be in it; raises AppUrlNotAllowed before anything is kept."""
        policy = self.remote_settings.app_urls
        if policy is None:
            return
        policy.check(registration.url, f"URL app '{registration.app_id}' registered")
        for fn in registration.functions:
            policy.check(fn.url, f"step URL of function '{fn.spec.id}'")

    async def _load_apps(self) -> None:
        """Pick up apps synced through any process (and at start-up)."""
        apps = await self.store.read(lambda tx: tx.list_apps())
        changed = False
        for app_id, _url, body, checksum in apps:
            if self.registry.checksums.get(app_id) == checksum:
                continue
            try:
                parsed = await asyncio.to_thread(parse_registration, body)
                self.registry.load_app(body, checksum, parsed)
                changed = True
            except (ProtocolError, ConfigError) as exc:
                log.error("stored app %s cannot be loaded: %s", app_id, exc)
        if changed:
            await self._register_crons()

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
                stored = await self.commit(checkpoint.commit_elsewhere(
                    cp, self.clock.now(), self.lease_until()))
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

    def _apply(self, effects: Effects) -> None:
        for dispatch in effects.dispatch:
            self._spawn_session(items.run_dispatch(self, dispatch), dispatch.item_id)
        if effects.emitted:
            self._spawn_background(self._ingest_stored(effects.emitted))
        if effects.wake:
            self._wake.set()
        stats = self.stats
        stats.events_received += len(effects.event_ids)
        stats.runs_created += effects.runs_created
        stats.runs_finished.update(effects.ended)
        for run_id, function_id, status, error in effects.unsuccessful:
            spec = self.routing.functions.get(function_id)
            runlog.run_ended(run_id, spec.public_id if spec else function_id, status, error)
        for run_id in effects.finished_runs:
            waiter = self._finished.get(run_id)
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
        self._wake.set()

    def _spawn_background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed", exc_info=task.exception())

    # --- events ------------------------------------------------------------------------------

    async def send(self, *args: Any) -> str | list[str]:
        """Send events: `(name, data)`, an `Event`, a dict, or a list of these. Returns the id
        (or ids). Events are durable once this returns."""
        single, events = normalize_send(args)    # validated, each at most MAX_EVENT_BYTES
        if not events:
            return []
        self._check_declared(args, events)
        now = self.clock.now()
        for event in events:
            event.id = event.id or scripts.new_id()
            event.ts = event.ts or now
        if self.routes_events:
            routing = self.routing
            await self.commit(lambda tx, place, effects: admission.ingest_events(
                tx, events, now, routing, place, effects))
        else:
            await self.store.write(lambda tx: admission.defer_events(tx, events, now))
        ids = [e.id for e in events]
        return ids[0] if single else ids

    def _check_declared(self, args: tuple[Any, ...], events: list[Event]) -> None:
        """Events declared with a model (`Event[Model](...)` given to `send`, or the trigger
        of a function here) are validated before anything is stored: InvalidEventError
        naming the field, so a bad event fails in the sender, not later in a run."""
        given = args[0] if len(args) == 1 else None
        items = given if isinstance(given, list | tuple) else [given]
        for item, event in zip(items, events, strict=False):
            if isinstance(item, Event) and item.schema is not None:
                check_event_data(item.schema, event.name, event.data)
        if self._typed:
            for event in events:
                for fn in self._typed:
                    schema = fn.event_type(event.name)
                    if schema is not None:
                        check_event_data(schema, event.name, event.data)
                        break

    @property
    def routes_events(self) -> bool:
        """Whether this engine routes the events it receives itself. A process that only sends
        events (no worker, no functions of its own: `Engine(db=..., worker=False)`, `stepwell
        serve --no-worker`) leaves that to the workers, which know the functions: its events
        are stored unrouted and the first worker to claim them routes them, even one that
        starts later. Routing them here, with no functions, would drop them silently."""
        return self.worker or bool(self.registry.native)

    async def _ingest_stored(self, events: list[Event]) -> None:
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
                    await self._ingest_stored([event])
                return
            log.exception("event %s (%s) cannot be processed: it is kept, but starts no run "
                          "and resolves no wait", events[0].id, events[0].name)
        event_id = events[0].id
        await self.store.write(lambda tx: tx.mark_event_processed(event_id))

    # --- runs --------------------------------------------------------------------------------

    async def runs(self, event_id: str | None = None, function_id: str | None = None,
                   status: str | None = None, limit: int = 1000) -> list[Run]:
        """Runs, newest first, filtered by event, function (`fn-id`, `app/fn-id` or an SDK
        function's composite id, which may itself hold slashes) or status."""
        if function_id is not None:
            fn = self.find_function(function_id)
            if fn is not None:
                function_id = fn.qualified_id
        rows = await self.store.read(lambda tx: tx.list_runs(
            event_id=event_id, function_id=function_id, status=status, limit=limit))
        return [run_view(RunState(row, []), now=self.clock.now()) for row in rows]

    async def count_runs(self, function_id: str, status: RunStatus, cap: int = 1000) -> int:
        """How many runs of a function (`app/fn`) have `status`, counting at most `cap`."""
        return await self.store.read(lambda tx: tx.count_runs(function_id, status, cap))

    async def events(self, name: str | None = None, limit: int = 100
                     ) -> list[tuple[Event, int]]:
        """Stored events, newest first, with the time each was received (epoch ms)."""
        return await self.store.read(lambda tx: tx.list_events(name, limit))

    async def get_event(self, event_id: str) -> Event | None:
        """The stored event with this id, or None."""
        found = await self.store.read(lambda tx: tx.get_events([event_id]))
        return found[0] if found else None

    async def get_run(self, run_id: str) -> Run | None:
        """The run with its step timeline as it is now, or None."""
        state = await self.store.read(lambda tx: tx.load_run_state(run_id))
        return None if state is None else run_view(state, now=self.clock.now())

    async def wait(self, run_id: str, timeout: float = 30.0) -> Run:
        """The run once it has ended; `timeout` is in real seconds (TimeoutError after)."""
        waiter = self._finished.setdefault(run_id, asyncio.Event())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                run = await self.get_run(run_id)
                if run is None:
                    raise KeyError(f"no run {run_id!r}")
                if run.status in TERMINAL_STATUSES:
                    return run
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"run {run_id} is still {run.status} after {timeout}s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wait(), min(remaining, 0.25))
                waiter.clear()
        finally:
            self._finished.pop(run_id, None)

    async def cancel(self, run_id: str, reason: str = "cancelled by request") -> bool:
        """Cancel a queued or running run; it stops at its next step boundary."""
        now, routing = self.clock.now(), self.routing
        return await self.commit(lambda tx, place, effects: scripts.cancel_run(
            tx, run_id, now, place, effects, reason=reason, routing=routing))

    async def send_signal(self, signal: str, data: Any = None) -> str | None:
        """Send a signal: resolve the step waiting for it (an SDK app's `step.waitForSignal`)
        with `{"signal": signal, "data": data}`. Returns that run's id, or None when nobody
        waits for the signal (it is not kept for a later wait)."""
        if not isinstance(signal, str) or not signal:
            raise ValueError("a signal needs a name (a non-empty string)")
        now = self.clock.now()
        return await self.commit(lambda tx, place, effects: signals.deliver(
            tx, signal, data, now, place, effects))

    async def replay(self, run_id: str, *, from_step: str | None = None,
                     step_input: list[Any] | None = None) -> str | None:
        """Run a run's function again with the same events; with `from_step`, reuse the
        results of the steps before that step. Returns the new run's id (None if the
        function's singleton setting skipped it). `step_input` (with `from_step`) reruns that
        step with these arguments: TypeScript SDK functions only, the one SDK that takes a
        step's input from the server. Raises ReplayError (a ValueError; RunNotFound, also a
        LookupError, when there is no such run)."""
        run = await self.store.read(lambda tx: tx.get_run(run_id))
        if run is None:
            raise admission.RunNotFound(f"no run with id {run_id!r}")
        fn = self.registry.get(run.function_id)
        if fn is None:
            raise admission.ReplayError(
                f"run {run_id} belongs to {run.function_id}, which is not registered here")
        if step_input is not None:
            if from_step is None:
                raise admission.ReplayError("a step's input can only be given with the step "
                                            "to rerun from")
            sdk = (self.registry.sdks.get(fn.spec.app_id, "")
                   if isinstance(fn, RemoteFunction) else "native")
            if not sdk.startswith("js:"):
                raise admission.ReplayError(
                    f"run {run_id} belongs to {run.function_id} ({sdk or 'unknown SDK'}): "
                    "editing a step's input is supported for functions on the TypeScript SDK "
                    "only (native and Python SDK steps cannot take their input from the "
                    "server); rerun from the step without 'input'")
        spec, now, routing = fn.spec, self.clock.now(), self.routing
        return await self.commit(lambda tx, place, effects: admission.replay_run(
            tx, spec, run_id, now, place, effects, routing=routing, from_step=from_step,
            step_input=step_input))

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
                    self._wake.set()
            quiet = 0 if busy else quiet + 1
            await asyncio.sleep(0.001)

    def _count_ready(self, tx: Tx) -> int:
        return tx.count_ready(self.clock.now())

    async def metrics(self) -> dict[str, object]:
        """This process's counters (since it started) and the shared queue's state now."""
        now = self.clock.now()

        def queue(tx: Tx) -> tuple[int, int | None]:
            return tx.count_ready(now), tx.next_due_at()

        ready, next_due = await self.store.read(queue)
        stats = self.stats
        return {
            "events_received": stats.events_received, "runs_created": stats.runs_created,
            "runs_finished": dict(stats.runs_finished),
            "steps_committed": dict(stats.steps_committed),
            "step_attempts_failed": stats.step_attempts_failed,
            "sdk_calls": stats.sdk_calls, "sdk_checkpoints": stats.sdk_checkpoints,
            "step_seconds": stats.step_seconds, "queue_wait_seconds": stats.queue_wait_seconds,
            "sessions_active": self._active(), "runs_parked": len(self._parked),
            "queue_ready": ready,
            # How late the oldest ready item is: work waiting for a free worker.
            "queue_lag_seconds": 0.0 if next_due is None or next_due > now or not ready
            else (now - next_due) / 1000,
        }

    async def next_due_at(self) -> int | None:
        """The earliest instant something is scheduled for (queued or parked in memory)."""
        due = await self.store.read(lambda tx: tx.next_due_at())
        parked = min(self._parked.values(), default=None)
        return _earliest(due, parked)

    # --- the worker --------------------------------------------------------------------------

    async def _work_loop(self) -> None:
        while self._running:
            self._wake.clear()
            room = self.max_concurrency - self._active()
            ahead = min(self.max_parked - len(self._parked), PREFETCH_BATCH
                        ) if self.prefetch_ms else 0
            claimed: list[QueueItem] = []
            if room > 0 or ahead > 0:
                now = self.clock.now()
                claim = functools.partial(_claim, now=now, owner=self.owner,
                                          lease_until=self.lease_until(), limit=max(room, 0),
                                          until=now + self.prefetch_ms, ahead=max(ahead, 0))
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
        waits: list[asyncio.Task[Any]] = [asyncio.create_task(self._wake.wait())]
        if due is not None:
            waits.append(asyncio.create_task(self.clock.sleep_until(due)))
        try:
            await asyncio.wait(waits, timeout=self.poll_seconds,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()

    async def _maintenance_loop(self) -> None:
        interval = max(self.lease_ms / 3000, 0.05)
        while self._running:
            await asyncio.sleep(interval)
            try:
                await self._maintain()
            except Exception:
                log.exception("maintenance failed; will retry")

    async def _maintain(self) -> None:
        owner, until, wall = self.owner, self.lease_until(), wall_ms()
        held = list(self._sessions.values())
        released = await self.store.write(lambda tx: (tx.renew_leases(owner, until, held),
                                                      tx.release_expired_leases(wall),
                                                      tx.unblock_all())[1:])
        if any(released):
            self._wake.set()
        await self._load_apps()
        if self.retention_ms is not None:
            await self.prune()
        before = self.clock.now() - UNPROCESSED_GRACE_MS
        stale = await self.store.read(lambda tx: tx.unprocessed_events(before, 500))
        if stale:
            await self._ingest_stored(stale)

    async def prune(self) -> dict[str, int]:
        """Apply the retention policy now (the worker also does every few seconds): delete
        runs that ended more than `retention` ago, events older than that which no run, batch
        or debounce refers to, and expired flow-control state. Returns what was deleted."""
        if self.retention_ms is None:
            return {"runs": 0, "events": 0, "flow_state": 0}
        return await upkeep.prune(self.store, self.clock, self.retention_ms)

    async def _reclaim_dead_local_workers(self) -> None:
        """Leases held by a dead process on this host are released at once, not after expiry."""
        owners = await self.store.read(lambda tx: tx.lease_owners())
        dead = upkeep.dead_local_owners(owners, self.owner)
        if dead:
            await self.store.write(lambda tx: [tx.release_leases_of(o) for o in dead])

    # --- cron --------------------------------------------------------------------------------

    async def _register_crons(self) -> None:
        now = self.clock.now()
        entries = [(key, trig.schedule.next_after(now), {"function_id": spec.qualified_id,
                                                         "index": index})
                   for key, index, trig, spec in self.registry.crons()]
        if entries:
            await self.store.write(lambda tx: [
                tx.enqueue("cron", key, due, payload=payload) for key, due, payload in entries])

def _earliest(*instants: int | None) -> int | None:
    return min((t for t in instants if t is not None), default=None)


def _load_states(tx: Tx, *, run_ids: list[str]) -> dict[str, RunState]:
    return tx.load_run_states(run_ids)


def _claim(tx: Tx, *, now: int, owner: str, lease_until: int, limit: int, until: int,
           ahead: int) -> list[QueueItem]:
    found = admission.claim(tx, now, owner, lease_until, limit) if limit > 0 else []
    if ahead > 0:
        found += tx.claim_timers(until, owner, lease_until, ahead)
    return found
