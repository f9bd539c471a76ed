"""The public engine: `stepwell.Engine`, the API the docs describe and nothing more.

`Engine` is a facade over the internal `Worker` (runtime/worker.py), which owns the store, the
clock, the loops and the run sessions. The service layer, the CLI and tests that need the
machinery reach it through one attribute, `engine._worker`; nothing else of it is a public
name here (tests/test_public_surface.py pins this class's public names).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import Sequence
from typing import Any

from stepwell.core import streams as core_streams
from stepwell.core.durations import DurationError, parse_duration_ms
from stepwell.core.models import TERMINAL_STATUSES, Event, Run, normalize_send
from stepwell.core.signing import sign_token
from stepwell.core.traceparent import caller_traceparent, stamp
from stepwell.core.urls import DEFAULT_DB
from stepwell.runtime import admission, scripts, sdkclient, signals, upkeep
from stepwell.runtime.clock import Clock
from stepwell.runtime.remote import RemoteFunction
from stepwell.runtime.secrets import server_secret
from stepwell.runtime.streams import item_view
from stepwell.runtime.views import run_view
from stepwell.runtime.worker import Worker
from stepwell.sdk.app import App
from stepwell.sdk.step import check_event_data
from stepwell.store.base import RunState


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
    `sdk_timeout_seconds` (calls to apps on the official SDKs). Runs are traced with
    OpenTelemetry through `tracer_provider` (an SDK `TracerProvider`), or exported over OTLP/HTTP
    to `otlp_endpoint` (default: `OTEL_EXPORTER_OTLP_ENDPOINT`); see runtime/tracing.py.
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
                 check_determinism: bool | None = None, tracer_provider: Any = None,
                 otlp_endpoint: str | None = None) -> None:
        # The machinery; internal callers (service, CLI, tests) use it, users never need to.
        self._worker = Worker(
            apps, db=db or DEFAULT_DB, clock=clock, executes=worker,
            lease_seconds=lease_seconds, max_concurrency=max_concurrency, fsync=fsync,
            sync_threads=sync_threads, poll_seconds=poll_seconds, signing_key=signing_key,
            sdk_timeout_seconds=sdk_timeout_seconds,
            retry_interval_seconds=retry_interval_seconds, prefetch_seconds=prefetch_seconds,
            max_parked=max_parked, tune_gc=tune_gc, sdk_concurrency=sdk_concurrency,
            retention=retention, app_url_allow=app_url_allow,
            block_warning_seconds=block_warning_seconds, check_determinism=check_determinism,
            tracer_provider=tracer_provider, otlp_endpoint=otlp_endpoint)
        # Functions here whose trigger declares a model: their events are checked on `send`.
        self._typed = [fn for fn in self._worker.registry.native.values() if fn.event_types]

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the database (migrating it) and start the workers and timers; `async with`
        calls it."""
        await self._worker.start()

    async def stop(self) -> None:
        """Stop claiming work and hand the runs in progress back (their leases are released,
        so they resume at once elsewhere or at the next start); `async with` calls it."""
        await self._worker.stop()

    # --- events ------------------------------------------------------------------------------

    async def send(self, *args: Any) -> str | list[str]:
        """Send events: `(name, data)`, an `Event`, a dict, or a list of these. Returns the id
        (or ids). Events are durable once this returns."""
        single, events = normalize_send(args)    # validated, each at most MAX_EVENT_BYTES
        if not events:
            return []
        self._check_declared(args, events)
        now = self._worker.clock.now()
        for event in events:
            event.id = event.id or scripts.new_id()
            event.ts = event.ts or now
        stamp(events, caller_traceparent())       # the run joins the caller's trace
        if self._worker.routes_events:
            routing = self._worker.routing
            await self._worker.commit(lambda tx, place, effects: admission.ingest_events(
                tx, events, now, routing, place, effects))
        else:
            await self._worker.store.write(lambda tx: admission.defer_events(tx, events, now))
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

    # --- runs --------------------------------------------------------------------------------

    async def runs(self, event_id: str | None = None, function_id: str | None = None,
                   status: str | None = None, limit: int = 1000) -> list[Run]:
        """Runs, newest first, filtered by event, function (`fn-id`, `app/fn-id` or an SDK
        function's composite id, which may itself hold slashes) or status."""
        if function_id is not None:
            fn = self._worker.find_function(function_id)
            if fn is not None:
                function_id = fn.qualified_id
        rows = await self._worker.read(lambda tx: tx.list_runs(
            event_id=event_id, function_id=function_id, status=status, limit=limit))
        return [run_view(RunState(row, []), now=self._worker.clock.now()) for row in rows]

    async def events(self, name: str | None = None, limit: int = 100
                     ) -> list[tuple[Event, int]]:
        """Stored events, newest first, with the time each was received (epoch ms)."""
        return await self._worker.read(lambda tx: tx.list_events(name, limit))

    async def get_event(self, event_id: str) -> Event | None:
        """The stored event with this id, or None."""
        found = await self._worker.read(lambda tx: tx.get_events([event_id]))
        return found[0] if found else None

    async def get_run(self, run_id: str) -> Run | None:
        """The run with its step timeline as it is now, or None."""
        state = await self._worker.read(lambda tx: tx.load_run_state(run_id))
        return None if state is None else run_view(state, now=self._worker.clock.now())

    async def wait(self, run_id: str, timeout: float = 30.0) -> Run:
        """The run once it has ended; `timeout` is in real seconds (TimeoutError after)."""
        waiter = self._worker.finished.setdefault(run_id, asyncio.Event())
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
            self._worker.finished.pop(run_id, None)

    async def cancel(self, run_id: str, reason: str = "cancelled by request") -> bool:
        """Cancel a queued or running run. A step body running now is interrupted
        (`ctx.cancelled`, and `asyncio.CancelledError` in an `async def` body)."""
        now, routing = self._worker.clock.now(), self._worker.routing
        return await self._worker.commit(lambda tx, place, effects: scripts.cancel_run(
            tx, run_id, now, place, effects, reason=reason, routing=routing))

    async def stream_token(self, channel: str, *, topics: list[str] | None = None,
                           ttl: str | int | float | datetime.timedelta = "1h") -> str:
        """A token that lets its holder (a browser) subscribe to `channel` (only `topics`, if
        given) until it expires (`ttl`, at most 7 days), without any other credential:
        `GET /v1/streams/{channel}?token=...`. Signed with the database's server secret, so
        any process serving the same database accepts it (docs: guides/streams.md)."""
        try:
            claims = core_streams.token_claims(channel, topics)
            ttl_ms = parse_duration_ms(ttl, what="ttl")
        except (core_streams.StreamNameError, DurationError) as exc:
            raise ValueError(str(exc)) from None
        if not 0 < ttl_ms <= core_streams.MAX_TOKEN_TTL_MS:
            raise ValueError(f"ttl must be more than 0 and at most 7d, got {ttl!r}")
        secret = await server_secret(self._worker)
        return sign_token(secret, claims, now=self._worker.clock.now() / 1000,
                          ttl=ttl_ms / 1000)

    async def stream_items(self, channel: str, *, after: int = 0,
                           limit: int = 100) -> list[dict[str, Any]]:
        """The items of `channel` with an offset above `after`, oldest first (what a
        subscriber gets; for an embedded engine, which has no HTTP server)."""
        found = await self._worker.store.read(
            lambda tx: tx.read_stream(channel, after, max(1, min(limit, 1000))))
        return [item_view(item) for item in found]

    async def send_signal(self, signal: str, data: Any = None) -> str | None:
        """Send a signal: resolve the step waiting for it (an SDK app's `step.waitForSignal`)
        with `{"signal": signal, "data": data}`. Returns that run's id, or None when nobody
        waits for the signal (it is not kept for a later wait)."""
        if not isinstance(signal, str) or not signal:
            raise ValueError("a signal needs a name (a non-empty string)")
        now = self._worker.clock.now()
        return await self._worker.commit(lambda tx, place, effects: signals.deliver(
            tx, signal, data, now, place, effects))

    async def replay(self, run_id: str, *, from_step: str | None = None,
                     step_input: list[Any] | None = None) -> str | None:
        """Run a run's function again with the same events; with `from_step`, reuse the
        results of the steps before that step. Returns the new run's id (None if the
        function's singleton setting skipped it). `step_input` (with `from_step`) reruns that
        step with these arguments: TypeScript SDK functions only, the one SDK that takes a
        step's input from the server. Raises ReplayError (a ValueError; RunNotFound, also a
        LookupError, when there is no such run)."""
        run = await self._worker.read(lambda tx: tx.get_run(run_id))
        if run is None:
            raise admission.RunNotFound(f"no run with id {run_id!r}")
        fn = self._worker.registry.get(run.function_id)
        if fn is None:
            raise admission.ReplayError(
                f"run {run_id} belongs to {run.function_id}, which is not registered here")
        if step_input is not None:
            if from_step is None:
                raise admission.ReplayError("a step's input can only be given with the step "
                                            "to rerun from")
            sdk = (self._worker.registry.sdks.get(fn.spec.app_id, "")
                   if isinstance(fn, RemoteFunction) else "native")
            if not sdk.startswith("js:"):
                raise admission.ReplayError(
                    f"run {run_id} belongs to {run.function_id} ({sdk or 'unknown SDK'}): "
                    "editing a step's input is supported for functions on the TypeScript SDK "
                    "only (native and Python SDK steps cannot take their input from the "
                    "server); rerun from the step without 'input'")
        spec, now, routing = fn.spec, self._worker.clock.now(), self._worker.routing
        return await self._worker.commit(lambda tx, place, effects: admission.replay_run(
            tx, spec, run_id, now, place, effects, routing=routing, from_step=from_step,
            step_input=step_input))

    # --- housekeeping and observation --------------------------------------------------------

    async def idle(self) -> None:
        """Wait (in real time) until no work is running or ready."""
        await self._worker.idle()

    async def prune(self) -> dict[str, int]:
        """Apply the retention policy now (the worker also does every few seconds): delete
        runs that ended more than `retention` ago, events older than that which no run, batch
        or debounce refers to, and expired flow-control state. Returns what was deleted."""
        worker = self._worker
        if worker.retention_ms is None:
            return {"runs": 0, "events": 0, "flow_state": 0}
        return await upkeep.prune(worker.store, worker.clock, worker.retention_ms)

    async def metrics(self) -> dict[str, object]:
        """This process's counters (since it started) and the shared queue's state now."""
        return await self._worker.metrics()
