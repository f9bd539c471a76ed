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
  (with its real start time, `started_at`), together with a span for each sleep, wait and
  invoke the run recorded (from its memos). A run cancelled from outside an executor gets it
  from the process that cancelled it (`trace_cancelled`).
- A step attempt's span is emitted by the process that ran it, when the attempt ends: error
  status and an `exception` event when it failed; a retry is a new attempt, a new span.
- A call to an SDK app is a span whose context goes to the app as the `traceparent` header,
  so the app's own spans join the run's trace.

Nothing of OpenTelemetry is imported unless tracing is configured (`configure`): the engine
then holds `NO_TRACING`, whose hooks do nothing.
"""

from __future__ import annotations

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


def _derived(kind: str, run_id: str, size: int) -> int:
    digest = hashlib.sha256(f"stepwell:{kind}:{run_id}".encode()).digest()
    return int.from_bytes(digest[:size], "big") or 1


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
                     error: Mapping[str, Any] | None, *, final: bool) -> None:
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
                     error: Mapping[str, Any] | None, *, final: bool) -> None:
        _, parent = self._under_run(state)
        status = "completed" if error is None else "failed" if final else "retrying"
        span = self.tracer.start_span(
            f"step {name}", context=parent, start_time=_ns(start_ms),
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
        _, under = self._under_run(state)
        for memo in state.memos.values():
            self._wait_span(memo, under, function_id, run.run_id, end_ms)

    def _wait_span(self, memo: Memo, parent: Any, function_id: str, run_id: str,
                   end_ms: int) -> None:
        """A sleep, wait or invoke the run recorded, as a span of the time it waited."""
        if memo.kind not in ("sleep", "wait", "invoke") or memo.started_at is None:
            return
        ended = memo.ended_at if memo.ended_at is not None else memo.due_at
        span = self.tracer.start_span(
            f"{memo.kind} {memo.step_id}", context=parent, start_time=_ns(memo.started_at),
            attributes={"stepwell.function.id": function_id, "stepwell.run.id": run_id,
                        "stepwell.step.id": memo.hash, "stepwell.step.name": memo.step_id,
                        "stepwell.step.kind": memo.kind})
        if memo.error is not None:
            self._fail(span, memo.error)
        span.end(end_time=_ns(min(ended if ended is not None else end_ms, end_ms)))

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
