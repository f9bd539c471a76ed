"""OpenTelemetry traces of runs: a span per run, per step attempt and per call to an SDK app.

A run outlives any process: it may execute across many requests and workers and resume after
restarts. So nothing about its trace is kept in memory; everything is derived from what is
stored:

- The run's trace context comes from its first event's `user.traceparent` (W3C), which
  `send()` fills from the caller's current span, the event API from the request's
  `traceparent` header, and a run from its own span for the events it sends and the runs it
  invokes. An event without one starts a new trace whose id is derived from the run id.
- The run span's id is derived from the run id, so every process that executes a part of the
  run parents its spans on the same span. The run span itself is emitted when the run ends
  (with its real start time, `started_at`). A run cancelled from outside an executor gets it
  from the process that cancelled it (`trace_cancelled`).
- A step attempt's span is emitted by the process that ran it, when the attempt ends: error
  status and an `exception` event when it failed; a retry is a new attempt, a new span. The
  attempts of steps of official-SDK apps are read from the SDK's answer (StepRun, StepError,
  StepFailed, the results it checkpointed during the call) and parented on the span of the call
  they ran in, so native and SDK runs look alike (`parent`). A result checkpointed through
  another process (several servers behind one address) hangs on the run span instead: the
  call's span is not known there. An SDK reports no step timings: an attempt spans its call
  (a checkpointed one, from the previous checkpoint of the call to its own).
- A call to an SDK app is a span whose context goes to the app as the `traceparent` header,
  so the app's own spans join the run's trace.

Sleeps, waits (`wait_for_event`, signals) and invokes can last days, and a span can only be
exported once it has ended: an OTLP backend (Jaeger, Tempo) shows nothing of a span still open,
and nothing of a span can change once exported. So each one is two spans, both children of the
run span, with ids derived from the run id and the step, so whichever process emits them names
the same spans:

- `<kind> <step> (scheduled)`, when the step is recorded: a zero-length span at that instant
  with what it waits for as attributes: `stepwell.step.due_at` (ISO 8601, UTC: when the sleep
  wakes or the wait times out), the event name and `match`/`if`, the signal, the invoked
  function. A zero-length span rather than a span running to the due time: the wait may end
  sooner (the event arrives), and a span ending in the future would show a wait that has not
  happened; rather than an event on the run span: that span is exported only when the run ends.
  Jaeger and Tempo show it in the trace's waterfall at once, with its tags (and a search for
  `stepwell.step.status=scheduled` finds what runs are waiting on).
- `<kind> <step>`, its real span from the step's start to its resolution, when it resolves: by
  the process that resolved a wait or invoke (the compare-and-set of its memo, `resolve_memo`:
  an event, a signal, a timeout, the invoked run's end; `trace_resolved`), and for a sleep by
  the execution of the run that passes it first. "First" is read from the stored state: the
  sleep woke after the last thing the run recorded (a step started or ended, an attempt
  failed) when the execution loaded it (`woken`); the execution that passes it records the
  steps after it, so later ones do not emit it again. An execution that slept through it
  emits it as it wakes; one that held the run while it woke without passing it (a parallel
  step still running) and recorded something after the wake emits it when it hands the run
  back, since the next one would take it for passed; before a call to an SDK app, the sleeps
  due by then are emitted (the app passes them).
- When the run ends, only what had not resolved yet is emitted (a pending wait, a sleep still
  ahead), cut short at the run's end: what resolved earlier was emitted then. A step recorded
  already resolved (a zero sleep, an invoke of an unknown function) is emitted at once.

Emitting is not transactional with the store: a process that dies between committing and
emitting loses the span, and one that emits and dies before its commit may have it emitted
again by the next process, with the same span id (backends show or merge the duplicate).
So may a sleep that an execution passed after its wake, recording nothing after it (the rest
of the run waits on something else), when the next execution passes it again.

Nothing of OpenTelemetry is imported unless tracing is configured (`configure`): the engine
then holds `NO_TRACING`, whose hooks do nothing.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from stepwell.core.config import ConfigError
from stepwell.core.models import Event, Memo
from stepwell.core.traceparent import (
    TRACEPARENT,
    format_traceparent,
    parse_traceparent,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Span, SpanContext, Tracer

    from stepwell.runtime.driver import Host
    from stepwell.store.base import RunState, Tx

log = logging.getLogger("stepwell.tracing")
INSTALL_HINT = "pip install 'stepwell[otel]'"
ENDPOINT_ENV = "STEPWELL_OTLP_ENDPOINT"


WAIT_KINDS = ("sleep", "wait", "invoke")     # the steps traced as time spent waiting


def _derived(kind: str, run_id: str, size: int) -> int:
    digest = hashlib.sha256(f"stepwell:{kind}:{run_id}".encode()).digest()
    return int.from_bytes(digest[:size], "big") or 1


def _iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def last_recorded(state: RunState) -> int:
    """The latest instant the run recorded something an execution of it did: a step started or
    ended, an attempt failed (not the resolution of a wait or invoke: another process makes it,
    without executing the run). A sleep that woke after it was not passed yet (`woken`)."""
    latest = 0
    for memo in state.memos.values():
        latest = max(latest, memo.started_at,
                     memo.ended_at if memo.kind not in WAIT_KINDS else 0)
    for failures in state.failures.values():
        for failure in failures:
            latest = max(latest, int(failure.get("at") or 0))
    return latest


def woken(state: RunState, now: int) -> list[Memo]:
    """The sleeps an execution of the run that loaded `state` at `now` is the first to pass:
    due by now, and after everything the run had recorded (see the module doc)."""
    since = last_recorded(state)
    return [m for m in state.memos.values() if m.kind == "sleep" and m.due_at is not None
            and since < m.due_at <= now]


class RunTrace:
    """Where a run sits in its trace, derived from its stored state (see the module doc)."""

    __slots__ = ("flags", "parent_span_id", "run_id", "span_id", "trace_id")

    def __init__(self, run_id: str, first_event: Event | None) -> None:
        self.run_id = run_id
        self.span_id = _derived("run-span", run_id, 8)
        parsed = parse_traceparent(first_event.user.get(TRACEPARENT)) if first_event else None
        self.parent_span_id: int | None = None      # the sender's span: the run span's parent
        if parsed is None:
            self.trace_id, self.flags = _derived("trace", run_id, 16), 1
        else:
            self.trace_id, self.parent_span_id, self.flags = parsed

    @property
    def traceparent(self) -> str:
        """The run span's context, for the events the run sends and the runs it invokes."""
        return format_traceparent(self.trace_id, self.span_id, self.flags)


class NoTracing:
    """Tracing not configured: every hook does nothing (and nothing is imported)."""

    enabled = False

    def run_trace(self, state: RunState) -> RunTrace | None:
        return None

    def step_attempt(self, state: RunState, function_id: str, step_id: str, name: str,
                     attempt: int, start_ms: int, end_ms: int,
                     error: Mapping[str, Any] | None, *, final: bool,
                     parent: Span | None = None) -> None:
        return None

    def wait_scheduled(self, state: RunState, memo: Memo,
                       details: Mapping[str, str | None]) -> None:
        return None

    def wait_resolved(self, state: RunState, memo: Memo) -> None:
        return None

    def run_ended(self, state: RunState, function_id: str, status: str, end_ms: int,
                  error: Mapping[str, Any] | None) -> None:
        return None

    def start_call(self, state: RunState, function_id: str, step_id: str, attempt: int,
                   start_ms: int) -> Span | None:
        return None

    def end_call(self, span: Span | None, end_ms: int, outcome: str,
                 error: Mapping[str, Any] | None, ops: list[str]) -> None:
        return None

    def close(self) -> None:
        return None


NO_TRACING = NoTracing()


class _Ids:
    """The tracer's id generator, able to hand out a chosen id for the next span: the run
    span's derived ids. Spans are started on the event loop's thread only, so the chosen id
    is always taken by the span it was set for."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.span: int | None = None
        self.trace: int | None = None

    def generate_span_id(self) -> int:
        chosen, self.span = self.span, None
        return chosen if chosen is not None else int(self.inner.generate_span_id())

    def is_trace_id_random(self) -> bool:
        return bool(self.inner.is_trace_id_random())

    def generate_trace_id(self) -> int:
        chosen, self.trace = self.trace, None
        return chosen if chosen is not None else int(self.inner.generate_trace_id())


F = TypeVar("F", bound=Callable[..., Any])


def _safe(method: F) -> F:
    """A failure to trace is logged, never the run's failure."""

    @functools.wraps(method)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except Exception:
            log.exception("tracing failed in %s; the run goes on", method.__name__)
            return None

    return guarded  # type: ignore[return-value]


def _ns(ms: int) -> int:
    return int(ms) * 1_000_000


class OtelTracing(NoTracing):
    """Spans through an OpenTelemetry SDK `TracerProvider`."""

    enabled = True

    def __init__(self, provider: Any, *, owned: bool) -> None:
        from opentelemetry import trace

        self.provider = provider
        self.owned = owned              # made here, from an OTLP endpoint
        self._trace = trace
        tracer: Any = provider.get_tracer("stepwell")
        if not hasattr(tracer, "id_generator"):
            raise ConfigError("tracer_provider must be an OpenTelemetry SDK TracerProvider "
                              "(opentelemetry.sdk.trace.TracerProvider): the run span's id is "
                              f"derived from the run id, got {type(provider).__name__}")
        self._ids = _Ids(tracer.id_generator)
        tracer.id_generator = self._ids
        self.tracer: Tracer = tracer

    def run_trace(self, state: RunState) -> RunTrace:
        return RunTrace(state.run.id, state.events[0] if state.events else None)

    def _context(self, ctx: SpanContext) -> Any:
        return self._trace.set_span_in_context(self._trace.NonRecordingSpan(ctx))

    def _span_context(self, trace_id: int, span_id: int, flags: int) -> SpanContext:
        trace = self._trace
        ctx: SpanContext = trace.SpanContext(trace_id, span_id, is_remote=True,
                                             trace_flags=trace.TraceFlags(flags))
        return ctx

    def _under_run(self, state: RunState) -> tuple[RunTrace, Any]:
        run = self.run_trace(state)
        return run, self._context(self._span_context(run.trace_id, run.span_id, run.flags))

    def _fail(self, span: Span, error: Mapping[str, Any] | None) -> None:
        from opentelemetry.trace import Status, StatusCode

        error = error or {}
        name, message = str(error.get("name", "Error")), str(error.get("message", ""))
        span.set_status(Status(StatusCode.ERROR, f"{name}: {message}"))
        span.add_event("exception", {"exception.type": name, "exception.message": message,
                                     "exception.stacktrace": str(error.get("stack", ""))})

    @_safe
    def step_attempt(self, state: RunState, function_id: str, step_id: str, name: str,
                     attempt: int, start_ms: int, end_ms: int,
                     error: Mapping[str, Any] | None, *, final: bool,
                     parent: Span | None = None) -> None:
        """An attempt of a step, under the run span, or under `parent` (the call to an SDK app
        the attempt ran in)."""
        under = (self._under_run(state)[1] if parent is None
                 else self._trace.set_span_in_context(parent))
        status = "completed" if error is None else "failed" if final else "retrying"
        span = self.tracer.start_span(
            f"step {name}", context=under, start_time=_ns(start_ms),
            attributes={"stepwell.function.id": function_id, "stepwell.run.id": state.run.id,
                        "stepwell.step.id": step_id, "stepwell.step.name": name,
                        "stepwell.step.attempt": attempt, "stepwell.step.status": status})
        if error is not None:
            self._fail(span, error)
        span.end(end_time=_ns(end_ms))

    @_safe
    def run_ended(self, state: RunState, function_id: str, status: str, end_ms: int,
                  error: Mapping[str, Any] | None) -> None:
        run = self.run_trace(state)
        parent = None if run.parent_span_id is None else self._context(
            self._span_context(run.trace_id, run.parent_span_id, run.flags))
        start = state.run.started_at or state.run.created_at
        self._ids.span, self._ids.trace = run.span_id, run.trace_id
        try:
            span = self.tracer.start_span(
                f"run {function_id}", context=parent, start_time=_ns(start),
                attributes={"stepwell.function.id": function_id, "stepwell.run.id": run.run_id,
                            "stepwell.run.status": status})
        finally:
            self._ids.span = self._ids.trace = None
        if status != "completed":
            self._fail(span, error or {"name": status, "message": f"the run was {status}"})
        span.end(end_time=_ns(end_ms))
        for memo in state.memos.values():
            if memo.kind in WAIT_KINDS and (memo.pending or memo.sleeping(end_ms)):
                self._wait_span(state, memo, end_ms)     # cut short: it never resolved

    def _step_span(self, state: RunState, memo: Memo, name: str, at_ms: int,
                   attributes: Mapping[str, Any], key: str) -> Span:
        """A span of a sleep, wait or invoke under the run span, its id derived from the
        run and the step (`key` tells the scheduled span from the real one)."""
        _, under = self._under_run(state)
        self._ids.span = _derived(f"{key}:{memo.hash}", state.run.id, 8)
        try:
            return self.tracer.start_span(
                name, context=under, start_time=_ns(at_ms),
                attributes={"stepwell.function.id": state.run.function_id,
                            "stepwell.run.id": state.run.id, "stepwell.step.id": memo.hash,
                            "stepwell.step.name": memo.step_id,
                            "stepwell.step.kind": memo.kind, **attributes})
        finally:
            self._ids.span = None

    @_safe
    def wait_scheduled(self, state: RunState, memo: Memo,
                       details: Mapping[str, str | None]) -> None:
        """A sleep, wait or invoke just recorded: the zero-length `(scheduled)` span (see the
        module doc), or the real span at once when it was recorded resolved."""
        if not memo.pending and not memo.sleeping(memo.started_at):
            self._wait_span(state, memo, memo.ended_at or memo.started_at)
            return
        attributes: dict[str, Any] = {"stepwell.step.status": "scheduled"}
        if memo.due_at is not None:
            attributes["stepwell.step.due_at"] = _iso(memo.due_at)
        attributes.update({f"stepwell.{k}": v for k, v in details.items() if v is not None})
        span = self._step_span(state, memo, f"{memo.kind} {memo.step_id} (scheduled)",
                               memo.started_at, attributes, "scheduled")
        span.end(end_time=_ns(memo.started_at))

    @_safe
    def wait_resolved(self, state: RunState, memo: Memo) -> None:
        """A sleep that woke, a wait or invoke that resolved: its real span."""
        end = memo.due_at if memo.kind == "sleep" else memo.ended_at
        self._wait_span(state, memo, end if end is not None else memo.started_at)

    def _wait_span(self, state: RunState, memo: Memo, end_ms: int) -> None:
        """A sleep, wait or invoke the run recorded, as a span of the time it waited."""
        status = ("failed" if memo.error is not None else "cancelled" if memo.pending
                  or memo.sleeping(end_ms) else "completed")
        span = self._step_span(state, memo, f"{memo.kind} {memo.step_id}", memo.started_at,
                               {"stepwell.step.status": status}, "wait")
        if memo.error is not None:
            self._fail(span, memo.error)
        span.end(end_time=_ns(max(end_ms, memo.started_at)))

    @_safe
    def start_call(self, state: RunState, function_id: str, step_id: str, attempt: int,
                   start_ms: int) -> Span:
        _, parent = self._under_run(state)
        return self.tracer.start_span(
            f"call {function_id}", context=parent, start_time=_ns(start_ms),
            attributes={"stepwell.function.id": function_id, "stepwell.run.id": state.run.id,
                        "stepwell.step.id": step_id, "stepwell.step.attempt": attempt})

    @_safe
    def end_call(self, span: Span | None, end_ms: int, outcome: str,
                 error: Mapping[str, Any] | None, ops: list[str]) -> None:
        if span is None:
            return
        span.set_attribute("stepwell.sdk.outcome", outcome)
        if ops:
            span.set_attribute("stepwell.sdk.ops", ops)
        if error is not None:
            self._fail(span, error)
        span.end(end_time=_ns(end_ms))

    def close(self) -> None:
        """Export what is buffered (the engine stops). The provider is not shut down, so an
        engine started again goes on tracing; the SDK shuts its providers down at exit."""
        try:
            self.provider.force_flush()
        except Exception:
            log.exception("flushing the OpenTelemetry spans failed")


async def trace_resolved(host: Host, resolved: list[tuple[str, str]]) -> None:
    """The spans of the waits and invokes (run id, step hash) a committed script resolved,
    read back from the store (the script holds only the compare-and-set of their memos)."""
    for run_id in dict.fromkeys(r for r, _ in resolved):
        def load(tx: Tx, run_id: str = run_id) -> RunState | None:
            return tx.load_run_state(run_id)

        state = await host.read(load)
        for hash_ in (h for r, h in resolved if r == run_id):
            memo = None if state is None else state.memos.get(hash_)
            if state is not None and memo is not None and not memo.pending:
                host.tracing.wait_resolved(state, memo)


async def trace_cancelled(host: Host, run_ids: list[str]) -> None:
    """The run spans of runs cancelled from outside any executor (the API, `cancel_on`, a
    timeout), read back from the store once the cancellation has committed."""
    for run_id in run_ids:
        def load(tx: Tx, run_id: str = run_id) -> RunState | None:
            return tx.load_run_state(run_id)

        state = await host.read(load)
        if state is not None and state.run.ended_at is not None:
            host.tracing.run_ended(state, state.run.function_id, state.run.status,
                              state.run.ended_at, state.run.error)


def call_traceparent(span: Span | None) -> str | None:
    """The `traceparent` header for a call to an SDK app made under `span`."""
    if span is None:
        return None
    ctx = span.get_span_context()
    return format_traceparent(ctx.trace_id, ctx.span_id, int(ctx.trace_flags))


def configure(tracer_provider: Any = None, otlp_endpoint: str | None = None) -> NoTracing:
    """The engine's tracing: through `tracer_provider` (an SDK TracerProvider) when given;
    else exported over OTLP/HTTP to `otlp_endpoint` (or `STEPWELL_OTLP_ENDPOINT`, which the
    CLI's `--otlp-endpoint` sets), or to `OTEL_EXPORTER_OTLP_ENDPOINT` when
    that is set (service name `OTEL_SERVICE_NAME`, default "stepwell"); else none."""
    if tracer_provider is not None:
        return OtelTracing(tracer_provider, owned=False)
    # `--otlp-endpoint` reaches the engine as STEPWELL_OTLP_ENDPOINT (so that `stepwell dev`'s
    # reloaded generations see it too): asked for explicitly, unlike the OTEL_ variable.
    otlp_endpoint = otlp_endpoint or os.environ.get(ENDPOINT_ENV) or None
    explicit = otlp_endpoint is not None
    endpoint = otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return NO_TRACING
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        text = (f"exporting traces to {endpoint} needs the OpenTelemetry SDK and OTLP "
                f"exporter: {INSTALL_HINT} ({exc})")
        if explicit:
            raise ConfigError(text) from None
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but %s; not tracing", text)
        return NO_TRACING
    # A base endpoint, as the OTLP spec defines it: traces go to <base>/v1/traces (unless
    # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT names their URL, which the exporter reads itself).
    url: str | None = endpoint.rstrip("/")
    if not explicit and os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        url = None
    elif url is not None and not url.endswith("/v1/traces"):
        url = f"{url}/v1/traces"
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME")
                                or "stepwell"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    return OtelTracing(provider, owned=True)
