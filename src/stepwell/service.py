"""The service layer: the one door the HTTP server, the CLI and the dashboard go through.

It wraps an `Engine` and speaks in plain, JSON-ready dicts shaped like Inngest's REST API v1, so
that no transport ever touches the store or hand-builds a response shape, and every transport
reports the same problem with the same words. Failures are raised as `ServiceError` subclasses that
carry the HTTP status a transport should use (`service_errors`); nothing here knows about HTTP
itself. The use cases of apps on the official SDKs are in `service_apps` (`SdkApps`, a base of
`Service`), for size: `Service` is the one service layer.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Final

from stepwell import (
    service_actions,
    service_approvals,
    service_deploy,
    service_runs,
    service_streams,
)
from stepwell.core.eventids import parse_seed, seeded_id
from stepwell.core.expressions import ExpressionError, compile_expression
from stepwell.core.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    InvalidEventError,
    Run,
)
from stepwell.core.traceparent import TRACEPARENT, parse_traceparent
from stepwell.core.urls import DEFAULT_DB
from stepwell.runtime.engine import Engine
from stepwell.sdk.app import App
from stepwell.service_apps import SdkApps
from stepwell.service_errors import (
    MAX_LIMIT,
    Conflict,
    InvalidInput,
    NotFound,
    PartialSend,
    parse_time,
)
from stepwell.service_runs import RunFilters as RunFilters  # re-exported for transports
from stepwell.service_views import (
    STATUS_NAMES,
    event_dict,
    function_config,
    held_dict,
    iso,
    run_dict,
    trigger_dict,
    usage_dict,
)

# Bulk cancellation reads this many active runs of one function at most per status.
BULK_CANCEL_SCAN: Final = 100_000


@dataclass(slots=True)
class EventBatch:
    """An event API body as the transport read it: the events (before the first that could
    not be read), whether the body was an array, and why the reading stopped, if it did."""

    items: list[object]
    is_array: bool = True
    error: str | None = None

    def where(self, index: int | None) -> str:
        """The event's position, for a batch's messages (a lone event needs none)."""
        return f"event [{index}]: " if self.is_array and index is not None else ""

    def not_stored(self) -> str:
        return " (the batch was not stored)" if self.is_array and len(self.items) > 1 else ""


def _with_traceparent(items: list[object], header: str | None) -> list[object]:
    """Events sent with a `traceparent` request header (W3C trace context) and none of their
    own carry it in `user.traceparent`: their runs join the sender's trace. A malformed
    header is ignored, as the W3C spec asks."""
    if header is None or parse_traceparent(header) is None:
        return items
    out: list[object] = []
    for item in items:
        user = item.get("user") or {} if isinstance(item, dict) else None
        if isinstance(item, dict) and isinstance(user, dict) and TRACEPARENT not in user:
            item = {**item, "user": {**user, TRACEPARENT: header.strip().lower()}}
        out.append(item)
    return out


def _with_seeded_ids(items: list[object], seed: tuple[int, bytes] | None) -> list[object]:
    """Give each event without an id the one Inngest derives from the request's seed (its
    1-based position in the request); events with an id, or a request without a seed, keep
    theirs."""
    if seed is None:
        return items
    out: list[object] = []
    for position, item in enumerate(items, start=1):
        if isinstance(item, dict) and not item.get("id"):
            item = {**item, "id": seeded_id(seed, position)}
        out.append(item)
    return out


class Service(SdkApps):
    """Use cases over one engine; every method returns JSON-ready values or raises
    `ServiceError`."""

    def __init__(self, engine: Engine, *, load_error: str | None = None) -> None:
        self.engine = engine
        # The machinery behind the public API (registry, registrar, reads, checkpoints): the
        # use cases that have no public engine method go through it.
        self.worker = engine._worker
        # The last refused registration per app URL (the Python SDK answers the sync with 200
        # whatever we said, so the refusal is kept to be shown by /v1/apps and the dashboard).
        self.sync_errors: dict[str, dict[str, Any]] = {}
        # `stepwell dev` serving while the app's code does not import: why (shown by /health
        # and the dashboard until a fixed version loads).
        self.load_error = load_error

    def _run_dict(self, run: Run, *, steps: bool = True) -> dict[str, Any]:
        """A run's API shape; SDK functions are named by their composite id, as in Inngest."""
        fn = self.worker.registry.get(run.function_id)
        return run_dict(run, steps=steps, public_id=fn.spec.public_id if fn else None)

    @classmethod
    def for_apps(cls, apps: list[App], *, db: str = DEFAULT_DB, signing_key: str | None = None,
                 **engine_options: Any) -> Service:
        """A service over a new (not yet started) engine, so that transports never need to
        import the runtime themselves. Raises `ConfigError` for invalid function options."""
        return cls(Engine(*apps, db=db, signing_key=signing_key, **engine_options))

    async def start(self) -> None:
        """Start the engine (idempotent), for servers that own its lifecycle."""
        await self.engine.start()

    async def stop(self) -> None:
        """Stop the engine cleanly (idempotent): workers drain, the store is closed."""
        await self.engine.stop()

    # --- events ------------------------------------------------------------------------------

    async def send_events(self, body: object, *, seed: str | None = None,
                          traceparent: str | None = None) -> list[str]:
        """Ingest Inngest's event API body: one event object or an array of them.

        All events are validated before any is stored, so a bad item in a batch stores nothing
        and the caller can fix it and resend the whole batch. (`POST /e/{key}` keeps the
        events before a bad one instead, as Inngest does: `send_event_batch`.) `seed` is the
        official SDKs' `x-inngest-event-id-seed`: events without an id get one derived from
        it, so a retried send stores nothing twice. `traceparent`: the request's W3C trace
        context header, for the events without their own (`user.traceparent`).
        """
        items: list[object]
        if isinstance(body, list):
            items = body
        elif isinstance(body, dict):
            items = [body]
        else:
            raise InvalidInput("the body must be an event object or an array of event objects, "
                               f"got {type(body).__name__}")
        batch = EventBatch(items, isinstance(body, list))
        try:
            return await self._send(_with_traceparent(_with_seeded_ids(items, parse_seed(seed)),
                                                      traceparent))
        except InvalidEventError as exc:
            raise InvalidInput(f"{batch.where(exc.index)}{exc}{batch.not_stored()}") from exc

    async def _send(self, items: list[object]) -> list[str]:
        ids = await self.engine.send(items)
        assert isinstance(ids, list)
        return ids

    async def send_event_batch(self, batch: EventBatch, *, seed: str | None = None,
                               traceparent: str | None = None) -> list[str]:
        """Inngest's `POST /e/{key}`: store the events up to the first invalid one (or the
        point where the body stopped being valid JSON) and, if there was one, raise
        `PartialSend` (400) carrying the ids of the events that were stored, as Inngest
        answers and the SDKs report in `SendEventsError.ids`. Nothing is stored for a request
        retried with the same `x-inngest-event-id-seed`."""
        items = _with_traceparent(_with_seeded_ids(batch.items, parse_seed(seed)), traceparent)
        message = batch.error
        ids: list[str] = []
        try:
            if items:
                ids = await self._send(items)
        except InvalidEventError as exc:
            # Validated one event at a time before anything is stored: the ones before the
            # invalid one are sent again on their own (this is the failure path only).
            message = f"{batch.where(exc.index)}{exc}"
            valid = items[:exc.index] if exc.index is not None else []
            ids = await self._send(valid) if valid else []
        if message is not None:
            stored = (f" ({len(ids)} event{'s' if len(ids) != 1 else ''} before it "
                      "were stored)") if ids else " (nothing was stored)"
            raise PartialSend(f"{message}{stored}", ids)
        return ids

    async def list_events(self, name: str | None = None, limit: int = 20
                          ) -> list[dict[str, Any]]:
        found = await self.engine.events(name or None, limit)
        return [event_dict(event, received) for event, received in found]

    async def get_event(self, event_id: str) -> dict[str, Any]:
        event = await self.engine.get_event(event_id)
        if event is None:
            raise NotFound(f"no event with id {event_id!r}")
        return event_dict(event)

    async def event_runs(self, event_id: str) -> list[dict[str, Any]]:
        """The runs an event started (Inngest: `GET /v1/events/{id}/runs`)."""
        if await self.engine.get_event(event_id) is None:
            raise NotFound(f"no event with id {event_id!r}")
        runs = await self.engine.runs(event_id=event_id, limit=MAX_LIMIT)
        return [self._run_dict(run, steps=False) for run in runs]

    # --- runs --------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> dict[str, Any]:
        run = await self.engine.get_run(run_id)
        if run is None:
            raise NotFound(f"no run with id {run_id!r}")
        usage = await self.worker.read(lambda tx: tx.run_model_usage(run_id))
        return self._run_dict(run) | {"state": await service_runs.run_state(self, run),
                                      "usage": usage_dict(usage)}

    async def versions(self) -> list[dict[str, Any]]:
        """Per function, its code's version here and those of its unfinished runs."""
        return await service_deploy.versions(self.worker)

    async def run_history(self, run_id: str) -> dict[str, Any]:
        """The run's recorded history as a self-contained file (`runtime.history`)."""
        history = await service_deploy.export_history(self.worker, run_id)
        if history is None:
            raise NotFound(f"no run with id {run_id!r}")
        return history

    async def list_runs(self, *, function_id: str | None = None, status: str | None = None,
                        event_id: str | None = None, limit: int = 100
                        ) -> list[dict[str, Any]]:
        """Runs, newest first, each with its derived `state`; `status` takes our names or
        Inngest's (`Running`...), or what an active run is doing (`sleeping`, `waiting`,
        `invoking`, `retrying`, `orphaned`). Every filter: `find_runs`."""
        return (await self.find_runs(RunFilters(function_id=function_id, status=status,
                                                event_id=event_id, limit=limit)))[0]

    async def find_runs(self, filters: RunFilters, *, outputs: bool = True
                        ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of runs for `filters` (service_runs) and the next page's cursor."""
        return await service_runs.page(self, filters, outputs=outputs)

    async def replay_run(self, run_id: str, body: object = None) -> dict[str, Any]:
        """Start a new run of a run's function with the same events (`{"from_step": id}`:
        reuse the results of the steps recorded before that step). Returns the new run."""
        if body is None:
            body = {}
        if not isinstance(body, dict) or set(body) - {"from_step"}:
            raise InvalidInput('the body must be empty or {"from_step": "<step id>"}')
        from_step = body.get("from_step")
        if from_step is not None and (not isinstance(from_step, str) or not from_step):
            raise InvalidInput("from_step must be a step id (a non-empty string)")
        try:
            new_id = await self.engine.replay(run_id, from_step=from_step)
        except LookupError as exc:         # the engine's RunNotFound
            raise NotFound(str(exc)) from None
        except ValueError as exc:          # the engine's ReplayError
            raise InvalidInput(str(exc)) from None
        if new_id is None:
            raise Conflict(f"the replay of run {run_id} was skipped: the function's singleton "
                           "setting allows one active run for its key")
        run = await self.engine.get_run(new_id)
        assert run is not None
        return self._run_dict(run)

    async def rerun_run(self, run_id: str, body: object = None) -> dict[str, Any]:
        """Inngest's REST v2 rerun: `{}` reruns from the start; `{"fromStep": {"stepId": id,
        "input": [...]}}` reuses the results of the steps before that step and, with `input`,
        runs that step with those arguments (TypeScript SDK functions). Returns
        `{"runId": <new run>}`."""
        body = {} if body is None else body
        if not isinstance(body, dict) or set(body) - {"fromStep"}:
            raise InvalidInput('the body must be empty or {"fromStep": {"stepId": "<step id>", '
                               '"input": [<arguments>]}}')
        from_step: str | None = None
        step_input: list[Any] | None = None
        raw = body.get("fromStep")
        if raw is not None:
            if not isinstance(raw, dict) or set(raw) - {"stepId", "input"}:
                raise InvalidInput('fromStep must be {"stepId": "<step id>", "input": '
                                   '[<arguments>]} ("input" optional)')
            from_step = raw.get("stepId")
            if not isinstance(from_step, str) or not from_step:
                raise InvalidInput("Step ID is required: fromStep.stepId must be a step id (a "
                                   "non-empty string)")
            if "input" in raw and raw["input"] is not None:
                if not isinstance(raw["input"], list):
                    raise InvalidInput("Step input must be a valid JSON array (the step's "
                                       "arguments), got "
                                       f"{type(raw['input']).__name__}")
                step_input = raw["input"]
        try:
            new_id = await self.engine.replay(run_id, from_step=from_step,
                                              step_input=step_input)
        except LookupError as exc:
            raise NotFound(str(exc)) from None
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        if new_id is None:
            raise Conflict(f"the rerun of run {run_id} was skipped: the function's singleton "
                           "setting allows one active run for its key")
        return {"runId": new_id}

    async def cancel_run(self, run_id: str) -> dict[str, Any]:
        """Cancel one run. Cancelling a cancelled run is a no-op; a finished one is a conflict.

        The run stops at its next step boundary (a step already executing completes), so the
        returned status may still be `Running` for a moment.
        """
        run = await self.engine.get_run(run_id)
        if run is None:
            raise NotFound(f"no run with id {run_id!r}")
        if run.status == "cancelled":
            return self._run_dict(run)
        if run.status in TERMINAL_STATUSES:
            raise Conflict(f"run {run_id} has already ended ({run.status}); "
                           "only queued or running runs can be cancelled")
        if not await self.engine.cancel(run_id):
            after = await self.engine.get_run(run_id)
            if after is None or after.status != "cancelled":
                state = after.status if after else "gone"
                raise Conflict(f"run {run_id} ended ({state}) before it could be cancelled")
        after = await self.engine.get_run(run_id)
        assert after is not None
        return self._run_dict(after)

    async def bulk_cancel(self, body: object) -> dict[str, Any]:
        """Inngest's `POST /v1/cancellations`: cancel the active runs of one function created
        in a time window, optionally only those whose triggering event matches `if`.

        Inngest records the cancellation and applies it asynchronously; stepwell applies it at
        once and reports how many runs it cancelled in `cancelled`.
        """
        if not isinstance(body, dict):
            raise InvalidInput("the body must be an object with app_id, function_id, "
                               "started_before and optionally started_after and if")
        app_id, fn_id = body.get("app_id"), body.get("function_id")
        if not isinstance(app_id, str) or not app_id:
            raise InvalidInput("'app_id' is required")
        if not isinstance(fn_id, str) or not fn_id:
            raise InvalidInput("'function_id' is required")
        qualified = self._function_of_app(app_id, fn_id)
        if qualified is None:
            raise NotFound(f"no function '{app_id}/{fn_id}' is registered (an SDK function is "
                           f"named by its slug '{app_id}-<id>' or by the id it was created "
                           "with)")
        if body.get("started_before") is None:
            raise InvalidInput("'started_before' is required")
        before = parse_time(body["started_before"], "started_before")
        raw_after = body.get("started_after")
        after = parse_time(raw_after, "started_after") if raw_after is not None else None
        if after is not None and after > before:
            raise InvalidInput("'started_after' must be before 'started_before'")
        condition = None
        if body.get("if") is not None:
            try:
                condition = compile_expression(body["if"])
            except ExpressionError as exc:
                raise InvalidInput(f"invalid 'if' expression: {exc}") from exc
        cancelled: list[str] = []
        for status in ACTIVE_STATUSES:
            for run in await self.engine.runs(function_id=qualified, status=status,
                                              limit=BULK_CANCEL_SCAN):
                if run.created_at > before or (after is not None and run.created_at < after):
                    continue
                if condition is not None:
                    event = await self.engine.get_event(run.event_id) if run.event_id else None
                    if event is None or not condition.matches(event.to_dict()):
                        continue
                if await self.engine.cancel(run.id):
                    cancelled.append(run.id)
        return {"function_id": qualified, "app_id": app_id, "started_after": iso(after),
                "started_before": iso(before), "if": body.get("if"),
                "cancelled": len(cancelled), "run_ids": cancelled}

    def _function_of_app(self, app_id: str, fn_id: str) -> str | None:
        """The qualified id of app `app_id`'s function `fn_id`: a native function's id (or
        `app/fn`), or an SDK function's slug (`<app>-<fn>`, what Inngest's API takes) or the
        id it was created with."""
        for qid, fn in self.worker.registry.items():
            spec = fn.spec
            if spec.app_id != app_id:
                continue
            if spec.remote:
                found = fn_id == spec.id or f"{app_id}-{fn_id}" == spec.id
            else:
                found = fn_id in (spec.id, qid)
            if found:
                return qid
        return None

    # --- signals -----------------------------------------------------------------------------

    async def send_signal(self, body: object) -> dict[str, Any]:
        """Inngest's `POST /v1/signals` (`inngest.sendSignal`, `step.sendSignal`): resolve the
        `step.waitForSignal` waiting for `signal` with `{signal, data}`; the run it resumed.
        Nobody waiting is NotFound (404), which the SDKs report as `runId: undefined`."""
        if not isinstance(body, dict) or set(body) - {"signal", "data"}:
            raise InvalidInput('the body must be {"signal": "<name>", "data": <any JSON>}')
        signal = body.get("signal")
        if not isinstance(signal, str) or not signal:
            raise InvalidInput("'signal' must be the signal's name (a non-empty string)")
        run_id = await self.engine.send_signal(signal, body.get("data"))
        if run_id is None:
            raise NotFound(f"no run is waiting for signal {signal!r}")
        return {"run_id": run_id}

    async def stream_token(self, body: object) -> dict[str, Any]:
        """`POST /v1/stream-tokens`: a subscription token for a channel (service_streams)."""
        return await service_streams.mint_token(self, body)

    async def decide_approval(self, token: str, body: object) -> dict[str, Any]:
        """`POST /v1/approvals/{token}`: approve or deny a waiting tool call (service_approvals)."""
        return await service_approvals.decide(self, token, body)

    # --- functions ---------------------------------------------------------------------------

    async def invoke_function(self, function_id: str, body: object) -> dict[str, Any]:
        """Start a run of a function with `{"data": ...}` (service_actions)."""
        return await service_actions.invoke_function(self, function_id, body)

    async def held_back(self, function_id: str, limit: int) -> list[dict[str, Any]]:
        """`GET /v1/functions/{id}/pending`: the function's batch and debounce windows that
        have not fired (events held back with no run yet; `held_dict`), at most `limit`, in
        key order. Unknown function: 404."""
        fn = self.worker.find_function(function_id)
        if fn is None:
            known = ", ".join(sorted(qid for qid, _ in self.worker.registry.items())) or "none"
            raise NotFound(f"no function {function_id!r} is registered (known: {known})")
        qualified = fn.spec.qualified_id
        windows = await self.worker.read(lambda tx: tx.held_windows(qualified, limit))
        return [held_dict(window) for window in windows]

    def list_functions(self) -> list[dict[str, Any]]:
        out = []
        for qid, fn in sorted(self.worker.registry.items()):
            spec = fn.spec
            out.append({"id": qid, "slug": spec.public_id, "app_id": spec.app_id,
                        "function_id": spec.id, "name": spec.name,
                        "triggers": [trigger_dict(t) for t in spec.triggers],
                        "retries": spec.retries, "failure_of": spec.failure_of,
                        "kind": "sdk" if spec.remote else "native"})
        return out

    async def metrics(self) -> dict[str, Any]:
        """Counters of this process and the queue's state, for `/metrics`."""
        return await self.engine.metrics()

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": 200, "message": "OK",
                               "functions": sum(1 for _ in self.worker.registry.items())}
        if self.load_error is not None:
            out["load_error"] = self.load_error
        return out

    # =========================================================================================
    # Dashboard support: the JSON the dashboard needs beyond Inngest's REST API (from here to
    # the end of the file). Everything here reads through existing engine and store-interface
    # methods; `function_run_counts` says which store query would make it cheaper.

    async def list_runs_with_events(self, *, function_id: str | None = None,
                                    status: str | None = None, event_id: str | None = None,
                                    limit: int = 100, outputs: bool = True
                                    ) -> list[dict[str, Any]]:
        """`list_runs`, each run with the name of its triggering event (`event_name`);
        `outputs=False` leaves out outputs and errors (see `service_runs.page`)."""
        filters = RunFilters(function_id=function_id, status=status, event_id=event_id,
                             limit=limit)
        return (await self.find_runs(filters, outputs=outputs))[0]

    async def run_events(self, run_id: str) -> list[dict[str, Any]]:
        """The events that triggered a run (one, or a batch's), oldest first, for the run page.

        Read through the run's stored state (as `/v0/runs/{id}/batch` is), which has the
        events in the order the run received them."""
        state = await self.worker.read(lambda tx: tx.load_run_state(run_id))
        if state is None:
            raise NotFound(f"no run with id {run_id!r}")
        return [event_dict(event) for event in state.events]

    def list_functions_with_config(self) -> list[dict[str, Any]]:
        """`list_functions`, each with its flow-control and cancellation settings (`config`,
        only the options that are set, written as a user would write them in `@app.function`)."""
        out = self.list_functions()
        for item in out:
            fn = self.worker.registry.get(item["id"])
            item["config"] = function_config(fn.spec) if fn is not None else {}
        return out

    async def function_run_counts(self, cap: int | None = None) -> list[dict[str, Any]]:
        """How many runs each function has in each status (at most `cap` are counted per
        status; `capped` lists the statuses that reached it, shown as "1000+"). Each count
        reads at most `cap + 1` entries of the (function, status) index: the dashboard
        refreshes this every few seconds, whatever the size of the database."""
        cap = RUN_COUNT_CAP if cap is None else cap
        out = []
        for qid, _fn in sorted(self.worker.registry.items()):
            counts: dict[str, int] = {}
            capped: list[str] = []
            for status in STATUS_NAMES:
                found = await self.worker.read(operator.methodcaller(
                    "count_runs", qid, status, cap + 1))
                if found > cap:
                    capped.append(STATUS_NAMES[status])
                counts[STATUS_NAMES[status]] = min(found, cap)
            out.append({"id": qid, "counts": counts, "capped": capped,
                        "total": sum(counts.values())})
        return out


# Per function and status, the dashboard counts at most this many runs (see
# `Service.function_run_counts`).
RUN_COUNT_CAP: Final = 1000
