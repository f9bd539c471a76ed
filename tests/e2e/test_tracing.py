"""OpenTelemetry traces of native runs, collected with the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import stepwell
from stepwell.testing import VirtualClock


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    found = InMemorySpanExporter()
    yield found
    found.clear()


def provider_for(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def by_name(spans: tuple[ReadableSpan, ...] | list[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        out.setdefault(span.name, []).append(span)
    for group in out.values():
        group.sort(key=lambda s: s.attributes["stepwell.step.attempt"]   # type: ignore[index]
                   if s.attributes and "stepwell.step.attempt" in s.attributes else 0)
    return out


async def run_of(engine: stepwell.Engine, name: str) -> str:
    [run] = await engine.runs(event_id=str(await engine.send(name, {})))
    return run.id


def flaky_app(failures: int) -> stepwell.App:
    app = stepwell.App("t")
    calls = {"n": 0}

    @app.function(id="order", trigger="t/order", retries=3)
    async def order(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.run("reserve", lambda: "reserved")

        def charge() -> str:
            calls["n"] += 1
            if calls["n"] <= failures:
                raise ConnectionError("card network down")
            return "charged"

        await step.run("charge", charge)
        await step.sleep("cool-off", "1m")
        return "done"

    return app


async def test_a_run_is_one_trace_with_a_span_per_step_attempt(
        make_engine: Any, clock: VirtualClock, exporter: InMemorySpanExporter) -> None:
    async with make_engine(flaky_app(failures=1),
                           tracer_provider=provider_for(exporter)) as engine:
        run_id = await run_of(engine, "t/order")
        await engine.idle()
        await clock.advance("2h")
        run = await engine.wait(run_id, timeout=10)
    assert run.status == "completed"
    spans = by_name(exporter.get_finished_spans())
    [root] = spans["run t/order"]
    assert root.parent is None and root.context is not None
    assert root.attributes == {"stepwell.function.id": "t/order", "stepwell.run.id": run_id,
                               "stepwell.run.status": "completed"}
    assert root.status.status_code is StatusCode.UNSET
    assert run.started_at is not None and root.start_time == run.started_at * 1_000_000
    everything = [s for group in spans.values() for s in group]
    assert {s.context.trace_id for s in everything if s.context} == {root.context.trace_id}
    children = [s for s in everything if s is not root]
    assert children and all(s.parent is not None and s.parent.span_id == root.context.span_id
                            for s in children)
    [reserve] = spans["step reserve"]
    assert reserve.attributes is not None and reserve.attributes["stepwell.step.attempt"] == 0
    failed, succeeded = spans["step charge"]           # the retry is a span of its own
    assert failed.attributes is not None and succeeded.attributes is not None
    assert (failed.attributes["stepwell.step.attempt"],
            succeeded.attributes["stepwell.step.attempt"]) == (0, 1)
    assert failed.status.status_code is StatusCode.ERROR
    assert "card network down" in (failed.status.description or "")
    assert failed.attributes["stepwell.step.status"] == "retrying"
    assert [e.name for e in failed.events] == ["exception"]
    assert succeeded.status.status_code is StatusCode.UNSET
    assert succeeded.attributes["stepwell.step.status"] == "completed"
    [sleep] = spans["sleep cool-off"]
    assert sleep.end_time is not None and sleep.start_time is not None
    assert sleep.end_time - sleep.start_time == 60_000 * 1_000_000


async def test_a_failed_run_span_has_error_status(
        make_engine: Any, clock: VirtualClock, exporter: InMemorySpanExporter) -> None:
    app = stepwell.App("t")

    @app.function(id="doomed", trigger="t/doomed", retries=0)
    async def doomed(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.run("boom", lambda: 1 / 0)

    async with make_engine(app, tracer_provider=provider_for(exporter)) as engine:
        run = await engine.wait(await run_of(engine, "t/doomed"), timeout=10)
    assert run.status == "failed"
    spans = by_name(exporter.get_finished_spans())
    [root], [boom] = spans["run t/doomed"], spans["step boom"]
    assert root.status.status_code is StatusCode.ERROR
    assert boom.status.status_code is StatusCode.ERROR
    assert boom.attributes is not None and boom.attributes["stepwell.step.status"] == "failed"


async def test_the_run_joins_the_senders_trace_and_so_do_its_children(
        make_engine: Any, clock: VirtualClock, exporter: InMemorySpanExporter) -> None:
    app = stepwell.App("t")

    @app.function(id="child", trigger="t/child")
    async def child(ctx: stepwell.Context, step: stepwell.Step) -> int:
        return int(await step.run("work", lambda: 2))

    @app.function(id="notified", trigger="t/notified")
    async def notified(ctx: stepwell.Context, step: stepwell.Step) -> str:
        return "ok"

    @app.function(id="parent", trigger="t/parent")
    async def parent(ctx: stepwell.Context, step: stepwell.Step) -> int:
        await step.send_event("notify", {"name": "t/notified", "data": {}})
        return int(await step.invoke("call-child", function=child, data={}))

    provider = provider_for(exporter)
    async with make_engine(app, tracer_provider=provider) as engine:
        with provider.get_tracer("test").start_as_current_span("checkout request") as caller:
            event_id = str(await engine.send("t/parent", {}))
        [run] = await engine.runs(event_id=event_id)
        run = await engine.wait(run.id, timeout=10)
        await engine.idle()
        stored = await engine.get_event(event_id)
    assert run.status == "completed" and run.output == 2
    assert stored is not None
    caller_ctx = caller.get_span_context()
    assert stored.user["traceparent"] == (f"00-{caller_ctx.trace_id:032x}-"
                                          f"{caller_ctx.span_id:016x}-"
                                          f"{int(caller_ctx.trace_flags):02x}")
    spans = by_name(exporter.get_finished_spans())
    everything = [s for group in spans.values() for s in group]
    assert {s.context.trace_id for s in everything if s.context} == {caller_ctx.trace_id}
    [parent_span] = spans["run t/parent"]
    assert parent_span.parent is not None and parent_span.parent.span_id == caller_ctx.span_id
    assert parent_span.context is not None
    for name in ("run t/child", "run t/notified", "invoke call-child"):
        [span] = spans[name]
        assert span.parent is not None and span.parent.span_id == parent_span.context.span_id


async def test_a_run_resumed_by_another_process_keeps_its_run_span(
        make_engine: Any, clock: VirtualClock, exporter: InMemorySpanExporter) -> None:
    """The run span's context is derived from stored data: a second engine (a restart, another
    worker) parents its step spans on the span the first one's spans named."""
    first, second = InMemorySpanExporter(), exporter
    async with make_engine(flaky_app(failures=0),
                           tracer_provider=provider_for(first)) as engine:
        run_id = await run_of(engine, "t/order")
        await engine.idle()                  # asleep for a minute after two steps
    before = by_name(first.get_finished_spans())
    assert "run t/order" not in before and len(before["step charge"]) == 1
    async with make_engine(flaky_app(failures=0),
                           tracer_provider=provider_for(second)) as engine:
        await clock.advance("2m")
        run = await engine.wait(run_id, timeout=10)
    assert run.status == "completed"
    [root] = by_name(second.get_finished_spans())["run t/order"]
    [charge] = before["step charge"]
    assert root.context is not None and charge.parent is not None and charge.context
    assert charge.parent.span_id == root.context.span_id
    assert charge.context.trace_id == root.context.trace_id


def test_without_tracing_nothing_of_opentelemetry_is_imported(tmp_path: Any) -> None:
    script = textwrap.dedent(f"""
        import asyncio, sys
        import stepwell
        from stepwell.runtime.tracing import NO_TRACING
        app = stepwell.App("t")

        @app.function(id="f", trigger="t/f")
        async def f(ctx, step):
            return await step.run("a", lambda: 1)

        async def main():
            async with stepwell.Engine(app, db="sqlite:///{tmp_path}/t.db") as engine:
                [run] = await engine.runs(event_id=await engine.send("t/f", {{}}))
                run = await engine.wait(run.id)
                assert run.output == 1 and engine._worker.tracing is NO_TRACING
            assert not [m for m in sys.modules if m.startswith("opentelemetry")], "imported"
        asyncio.run(main())
    """)
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr


async def test_a_run_cancelled_from_outside_has_its_run_span(
        make_engine: Any, clock: VirtualClock, exporter: InMemorySpanExporter) -> None:
    async with make_engine(flaky_app(failures=0),
                           tracer_provider=provider_for(exporter)) as engine:
        run_id = await run_of(engine, "t/order")
        await engine.idle()                          # asleep for a minute
        await clock.advance("10s")
        assert await engine.cancel(run_id)
        await engine.idle()
    spans = by_name(exporter.get_finished_spans())
    [root] = spans["run t/order"]
    assert root.attributes is not None and root.attributes["stepwell.run.status"] == "cancelled"
    assert root.status.status_code is StatusCode.ERROR
    [sleep] = spans["sleep cool-off"]            # cut short where the run ended
    assert sleep.end_time == root.end_time
    assert sleep.parent is not None and root.context is not None
    assert sleep.parent.span_id == root.context.span_id


def waiting_app() -> stepwell.App:
    """A run that sleeps, waits for an event, waits for a signal and invokes a child that
    sleeps: each of these lasts until the test moves it on."""
    app = stepwell.App("t")

    @app.function(id="child", trigger="t/child")
    async def child(ctx: stepwell.Context, step: stepwell.Step) -> int:
        await step.sleep("child-nap", "10m")
        return 1

    @app.function(id="flow", trigger="t/flow")
    async def flow(ctx: stepwell.Context, step: stepwell.Step) -> int:
        await step.sleep("nap", "1h")
        approval = await step.wait_for_event("approval", event="t/approved", timeout="1d",
                                             match="data.order")
        assert approval is not None
        go = await step.wait_for_signal("go", signal=f"go-{ctx.event.data['order']}",
                                        timeout="1d")
        assert go is not None
        return int(await step.invoke("call-child", function=child, data={}))

    return app


def names(*exporters: InMemorySpanExporter) -> list[str]:
    return sorted(s.name for e in exporters for s in e.get_finished_spans())


def one(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    [span] = [s for s in exporter.get_finished_spans() if s.name == name]
    return span


async def test_sleeps_waits_and_invokes_are_traced_while_they_happen(
        make_engine: Any, clock: VirtualClock, exporter: InMemorySpanExporter) -> None:
    """Each sleep, wait and invoke is a `(scheduled)` span when it is recorded and its real span
    when it resolves, long before the run ends; the run's end emits none of them again. The
    run starts on one engine and goes on on another (a restart): still once each."""
    first = InMemorySpanExporter()
    start = clock.now()
    async with make_engine(waiting_app(), tracer_provider=provider_for(first)) as engine:
        [run] = await engine.runs(event_id=str(await engine.send("t/flow", {"order": 42})))
        run_id = run.id
        await engine.idle()
    scheduled = one(first, "sleep nap (scheduled)")
    assert scheduled.attributes is not None
    assert scheduled.attributes["stepwell.step.status"] == "scheduled"
    assert scheduled.attributes["stepwell.step.due_at"] == "2026-01-01T01:00:00.000Z"
    assert scheduled.start_time == scheduled.end_time == start * 1_000_000
    assert not [n for n in names(first) if not n.endswith("(scheduled)")]

    async with make_engine(waiting_app(), tracer_provider=provider_for(exporter)) as engine:
        await clock.advance("2h")
        await engine.idle()
        nap = one(exporter, "sleep nap")              # woke: its real span, the run still on
        assert (nap.start_time, nap.end_time) == (start * 1_000_000,
                                                  (start + 3_600_000) * 1_000_000)
        wait = one(exporter, "wait approval (scheduled)")
        assert wait.attributes is not None
        assert (wait.attributes["stepwell.wait.event"], wait.attributes["stepwell.wait.match"],
                wait.attributes["stepwell.step.due_at"]) == (
            "t/approved", "data.order", "2026-01-02T01:00:00.000Z")   # from the wake
        assert "wait approval" not in names(exporter)

        await clock.advance("5m")
        await engine.send("t/approved", {"order": 7})     # not this run's order
        await engine.send("t/approved", {"order": 42})
        await engine.idle()
        approval = one(exporter, "wait approval")      # from the wake to the event
        assert (approval.start_time, approval.end_time) == (
            (start + 3_600_000) * 1_000_000, (start + 7_500_000) * 1_000_000)
        signal = one(exporter, "wait go (scheduled)")
        assert signal.attributes is not None
        assert signal.attributes["stepwell.wait.signal"] == "go-42"

        await clock.advance("1m")
        assert await engine.send_signal("go-42", {"ok": True}) == run_id
        await engine.idle()
        assert one(exporter, "wait go").status.status_code is StatusCode.UNSET
        invoke = one(exporter, "invoke call-child (scheduled)")
        assert invoke.attributes is not None
        assert invoke.attributes["stepwell.invoke.function"] == "t/child"
        assert "invoke call-child" not in names(exporter) and "run t/flow" not in names(exporter)

        await clock.advance("1h")
        run = await engine.wait(run_id, timeout=10)
        await engine.idle()
    assert run.status == "completed" and run.output == 1
    every = names(first, exporter)
    for name in ("sleep nap", "wait approval", "wait go", "invoke call-child", "sleep child-nap",
                 "sleep nap (scheduled)", "wait approval (scheduled)", "wait go (scheduled)",
                 "invoke call-child (scheduled)", "run t/flow", "run t/child"):
        assert every.count(name) == 1, (name, every)
    root = one(exporter, "run t/flow")
    assert root.context is not None
    spans = [*first.get_finished_spans(), *exporter.get_finished_spans()]
    assert {s.context.trace_id for s in spans if s.context} == {root.context.trace_id}
    for name in ("sleep nap", "wait approval", "wait go", "invoke call-child",
                 "invoke call-child (scheduled)"):
        [span] = [s for s in spans if s.name == name]
        assert span.parent is not None and span.parent.span_id == root.context.span_id
        assert span.attributes is not None
        assert span.attributes["stepwell.step.status"] == (
            "scheduled" if name.endswith("(scheduled)") else "completed")


async def test_a_timed_out_wait_and_a_short_sleep_are_traced_once(
        make_engine: Any, clock: VirtualClock, exporter: InMemorySpanExporter) -> None:
    app = stepwell.App("t")

    @app.function(id="patient", trigger="t/patient")
    async def patient(ctx: stepwell.Context, step: stepwell.Step) -> bool:
        await step.sleep("blink", "1s")               # short: spent in memory
        got = await step.wait_for_event("reply", event="t/reply", timeout="1h")
        await step.run("after", lambda: 1)
        return got is None

    async with make_engine(app, tracer_provider=provider_for(exporter)) as engine:
        run_id = await run_of(engine, "t/patient")
        await clock.advance("2s")
        await engine.idle()
        assert names(exporter).count("sleep blink") == 1
        assert "wait reply" not in names(exporter)
        await clock.advance("2h")
        run = await engine.wait(run_id, timeout=10)
        await engine.idle()
    assert run.status == "completed" and run.output is True
    every = names(exporter)
    assert every.count("sleep blink") == every.count("wait reply") == 1
    reply = one(exporter, "wait reply")
    assert reply.start_time is not None and reply.end_time is not None
    assert reply.end_time - reply.start_time == 3_600_000 * 1_000_000


async def test_a_sleep_that_wakes_during_a_parallel_step_is_traced_once(
        make_engine: Any, clock: VirtualClock, exporter: InMemorySpanExporter) -> None:
    """The execution holding the run when the sleep wakes records a step after the wake: the
    next execution cannot tell from the stored state that nobody passed the sleep, so the
    execution that hands the run back emits it."""
    app = stepwell.App("t")

    @app.function(id="both", trigger="t/both")
    async def both(ctx: stepwell.Context, step: stepwell.Step) -> int:
        async def slow() -> str:
            clock._set(clock.now() + 120_000)      # the step lasts two (virtual) minutes
            return "done"

        await asyncio.gather(step.sleep("nap", "1m"), step.run("slow", slow))
        return int(await step.run("after", lambda: 1))

    async with make_engine(app, tracer_provider=provider_for(exporter)) as engine:
        run = await engine.wait(await run_of(engine, "t/both"), timeout=10)
        await engine.idle()
    assert run.status == "completed"
    assert names(exporter).count("sleep nap") == 1
