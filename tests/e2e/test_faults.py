"""No crash loops (issue 10.3): an unexpected exception in stepwell's own code, at any stage of
a session, fails the run (or the attempt, with backoff, then the run) with the error recorded,
never leaves it leased and stuck, and the worker carries on with other runs.

Faults are injected by monkeypatching each stage to raise while a switch is on: loading a run's
state, replaying it, running a step, committing a checkpoint, the end-of-run script, acting on a
script's effects, and the HTTP executor's handling of an SDK answer.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import stepwell
from stepwell.runtime import driver, scripts, session, upkeep, worker
from stepwell.runtime.remote import RemoteExecutor
from stepwell.testing import VirtualClock

DEADLINE_S = 60.0


class Fault:
    """Makes a patched stage raise while `on`, at most `times` times (None: always)."""

    def __init__(self, times: int | None = None) -> None:
        self.on = False
        self.times = times
        self.raised = 0

    def maybe_raise(self, stage: str, args: tuple[Any, ...] = ()) -> None:
        if self.on and (self.times is None or self.raised < self.times) and _targeted(args):
            self.raised += 1
            raise RuntimeError(f"injected {stage} fault")


HEALTHY = ("healthy", "faults/healthy")


def _targeted(args: tuple[Any, ...]) -> bool:
    """Faults hit the run under test, not the healthy runs that show the worker carries on
    (stages that cannot tell whose work they do are hit whatever it is)."""
    for arg in args:
        spec = getattr(arg, "spec", None)
        if spec is not None:
            return spec.id not in HEALTHY
        function_id = getattr(arg, "function_id", None)
        if isinstance(function_id, str):
            return function_id not in HEALTHY
    return True


def inject(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, fault: Fault,
           stage: str, *, after: bool = False) -> None:
    """Wrap `owner.name` (sync or async) so it raises when the fault is on (before the
    original, or after it when `after`: the work is done, then the failure)."""
    original = getattr(owner, name)
    if asyncio.iscoroutinefunction(original):
        async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
            if not after:
                fault.maybe_raise(stage, args)
            value = await original(*args, **kwargs)
            if after:
                fault.maybe_raise(stage, args)
            return value
        monkeypatch.setattr(owner, name, wrapped_async)
        return

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not after:
            fault.maybe_raise(stage, args)
        value = original(*args, **kwargs)
        if after:
            fault.maybe_raise(stage, args)
        return value
    monkeypatch.setattr(owner, name, wrapped)


def inject_checkpoint(monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
    """A fault as a step's memo is handed over to be committed, whichever way: on its own
    (`checkpoint`), or to the run's next transaction (`defer_checkpoint`). A failure of the
    transaction that carries a deferred memo is tested in test_deferred_checkpoint.py."""
    for name in ("checkpoint", "defer_checkpoint"):
        inject(monkeypatch, driver.RunDriver, name, fault, "checkpoint")


def faulty_app(retries: int) -> stepwell.App:
    app = stepwell.App("faults")

    @app.function(id="sleepy", trigger="faults/go", retries=retries)
    async def sleepy(ctx: stepwell.Context, step: stepwell.Step) -> str:
        first = await step.run("first", lambda: "one")
        await step.sleep("nap", "1h")
        second = await step.run("second", lambda: "two")
        return f"{first}-{second}"

    @app.function(id="healthy", trigger="faults/other")
    async def healthy(ctx: stepwell.Context, step: stepwell.Step) -> int:
        return int(await step.run("double", lambda: ctx.event.data["n"] * 2))

    return app


async def settle(engine: stepwell.Engine) -> None:
    await asyncio.wait_for(engine.idle(), DEADLINE_S)


async def run_with_fault(make_engine: Any, clock: VirtualClock, fault: Fault, *,
                         retries: int) -> tuple[stepwell.Run, list[stepwell.Run]]:
    """Start a run, turn the fault on before it resumes from its sleep, let time pass (for
    backoffs), then check that other runs still complete. Returns the run, and the others."""
    async with make_engine(faulty_app(retries), clock=clock) as engine:
        event_id = await engine.send("faults/go", {})
        await settle(engine)
        [run] = await engine.runs(event_id=str(event_id))
        fault.on = True
        for _ in range(8):                     # the sleep, then every backoff
            await clock.advance("1h")
            await settle(engine)
        others = [await engine.send("faults/other", {"n": n}) for n in range(3)]
        await settle(engine)
        fault.on = False
        found = await engine.get_run(run.id)
        assert found is not None
        done = [await engine.wait((await engine.runs(event_id=str(e)))[0].id, DEADLINE_S)
                for e in others]
        assert not engine._worker._sessions, "a session is still holding a run"
        return found, done


def assert_failed_with(run: stepwell.Run, fragment: str, *, crashes: int) -> None:
    assert run.status == "failed", (run.status, run.steps)
    assert run.error is not None and run.error["name"] == "StepwellInternalError", run.error
    assert fragment in run.error["message"], run.error["message"]
    engine_steps = [s for s in run.steps if s.id == "(engine)"]
    recorded = len(engine_steps[0].failures) if engine_steps else 0
    assert recorded == crashes, run.steps


def assert_others_completed(others: list[stepwell.Run]) -> None:
    assert [(r.status, r.output) for r in others] == [("completed", 0), ("completed", 2),
                                                      ("completed", 4)]


def store_tx_class(engine_url: str) -> Any:
    if engine_url.startswith("sqlite"):
        from stepwell.store.sqlite_tx import SqliteTx
        return SqliteTx
    from stepwell.store.postgres_tx import PostgresTx
    return PostgresTx


async def test_a_fault_loading_the_run_state_fails_the_run(
        make_engine: Any, clock: VirtualClock, db_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fault = Fault()
    inject(monkeypatch, store_tx_class(db_url), "load_run_states", fault, "state loading")
    run, others = await run_with_fault(make_engine, clock, fault, retries=2)
    # The state cannot be read even to count the attempts: failed at once, by the bare script.
    assert_failed_with(run, "injected state loading fault", crashes=0)
    assert_others_completed(others)


@pytest.mark.parametrize(("owner", "name", "stage"), [
    (session.RunSession, "_replay", "replay"),
    (session.RunSession, "_run", "step execution"),
    (driver.RunDriver, "checkpoint", "checkpoint"),
])
async def test_a_fault_in_a_session_stage_is_retried_then_fails_the_run(
        make_engine: Any, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch,
        owner: Any, name: str, stage: str) -> None:
    fault = Fault()
    if stage == "checkpoint":
        inject_checkpoint(monkeypatch, fault)
    else:
        inject(monkeypatch, owner, name, fault, stage)
    run, others = await run_with_fault(make_engine, clock, fault, retries=2)
    assert_failed_with(run, f"injected {stage} fault", crashes=2)
    assert [s.id for s in run.steps][:1] == ["first"]      # what was done before is kept
    assert_others_completed(others)


async def test_a_fault_in_the_end_script_fails_the_run_by_the_bare_script(
        make_engine: Any, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    fault = Fault()
    inject(monkeypatch, scripts, "end_run", fault, "end script")
    run, others = await run_with_fault(make_engine, clock, fault, retries=1)
    assert_failed_with(run, "injected end script fault", crashes=1)
    assert_others_completed(others)


async def test_a_transient_fault_is_retried_and_the_run_completes(
        make_engine: Any, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    fault = Fault(times=1)
    inject_checkpoint(monkeypatch, fault)
    run, others = await run_with_fault(make_engine, clock, fault, retries=2)
    assert run.status == "completed" and run.output == "one-two", run
    [engine_step] = [s for s in run.steps if s.id == "(engine)"]
    assert "injected checkpoint fault" in engine_step.failures[0]["error"]["message"]
    assert_others_completed(others)


async def test_a_fault_acting_on_effects_after_a_commit_loses_nothing(
        make_engine: Any, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The script committed, then acting on its effects raised: what was committed stands.
    Here the first commit after the sleep is the run's end, which carries the last step's
    memo (RunDriver.defer_checkpoint): the run is completed, each step ran once, and the
    fault after it records no attempt against a run that has ended."""
    fault = Fault(times=1)
    inject(monkeypatch, worker.Worker, "_apply", fault, "effects", after=True)
    run, others = await run_with_fault(make_engine, clock, fault, retries=2)
    assert fault.raised == 1
    assert run.status == "completed" and run.output == "one-two", run
    assert [(s.id, s.attempts) for s in run.steps if s.kind == "run"] == [("first", 1),
                                                                           ("second", 1)]
    assert_others_completed(others)


async def test_a_user_except_exception_does_not_swallow_an_engine_fault(
        make_engine: Any, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    app = stepwell.App("swallow")
    carried_on: list[str] = []

    @app.function(id="f", trigger="swallow/go", retries=0)
    async def f(ctx: stepwell.Context, step: stepwell.Step) -> str:
        try:
            await step.run("a", lambda: 1)
        except Exception:
            carried_on.append("swallowed")
        return "done"

    fault = Fault()
    inject_checkpoint(monkeypatch, fault)
    async with make_engine(app, clock=clock) as engine:
        fault.on = True
        event_id = await engine.send("swallow/go", {})
        await settle(engine)
        fault.on = False
        [listed] = await engine.runs(event_id=str(event_id))
        run = await engine.get_run(listed.id)
    assert carried_on == []
    assert run is not None
    assert_failed_with(run, "injected checkpoint fault", crashes=0)


# --- the HTTP executor (official-SDK apps) ---------------------------------------------------

SDK = {"x-inngest-sdk": "inngest-py:v0.5.19", "content-type": "application/json"}


@pytest.fixture
async def sdk_url() -> AsyncIterator[str]:
    """A minimal SDK app: one step, then done."""

    async def handle(request: Request) -> Response:
        body = json.loads(await request.body())
        if "ha" in body["steps"]:
            return Response(json.dumps("finished"), headers=SDK)
        return Response(json.dumps([{"id": "ha", "op": "StepRun", "displayName": "a",
                                     "data": 1}]), status_code=206, headers=SDK)

    app = Starlette(routes=[Route("/api/inngest", handle, methods=["POST"])])
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/api/inngest"
    server.should_exit = True
    await task
    sock.close()


def registration(url: str, retries: int) -> dict[str, Any]:
    return {"appName": "sdk", "url": url, "functions": [{
        "id": "sdk-fn", "name": "fn", "triggers": [{"event": "sdk/go"}],
        "steps": {"step": {"id": "step", "runtime": {"url": f"{url}?fnId=sdk-fn&stepId=step"},
                           "retries": {"attempts": retries}}}}]}


@pytest.mark.parametrize("stage", ["_handle", "_call"])
async def test_a_fault_in_the_http_executor_is_retried_then_fails_the_run(
        make_engine: Any, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch,
        sdk_url: str, stage: str) -> None:
    fault = Fault()
    inject(monkeypatch, RemoteExecutor, stage, fault, "SDK executor")
    native = faulty_app(0)
    async with make_engine(native, clock=clock) as engine:
        await engine._worker.registrar.register(registration(sdk_url, 2))
        fault.on = True
        event_id = await engine.send("sdk/go", {})
        for _ in range(8):
            await settle(engine)
            await clock.advance("1h")
        other = await engine.send("faults/other", {"n": 5})
        await settle(engine)
        fault.on = False
        [listed] = await engine.runs(event_id=str(event_id))
        run = await engine.get_run(listed.id)
        [done] = await engine.runs(event_id=str(other))
    assert run is not None
    assert_failed_with(run, "injected SDK executor fault", crashes=2)
    assert (done.status, done.output) == ("completed", 10)


async def test_an_event_that_cannot_be_processed_is_not_retried_forever(
        make_engine: Any, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """An emitted event whose processing raises (a bug, a poison payload) was re-ingested by
    every maintenance pass, forever; the events stored with it were held back too. Now the
    batch is split, the others are processed, and the bad one is kept (visible) but marked
    processed after one failure."""
    from stepwell.runtime import admission

    real_process = admission.process_event
    attempts: list[str] = []

    def process(tx: Any, event: stepwell.Event, *args: Any, **kwargs: Any) -> None:
        if event.name == "poison/x":
            attempts.append(event.id)
            raise RuntimeError("injected event processing fault")
        real_process(tx, event, *args, **kwargs)

    monkeypatch.setattr(admission, "process_event", process)
    app = faulty_app(0)

    @app.function(id="sender", trigger="faults/send")
    async def sender(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.send_event("both", [{"name": "poison/x", "data": {}},
                                       {"name": "faults/other", "data": {"n": 21}}])

    async with make_engine(app, clock=clock) as engine:
        await engine.send("faults/send", {})
        await settle(engine)
        first_pass = len(attempts)               # the batch, then the event alone
        for _ in range(5):                       # past the unprocessed grace, then upkeep
            await settle(engine)
            await clock.advance("1m")
            await upkeep.maintain(engine._worker)  # its loop runs every 10 real seconds
        await settle(engine)
        runs = {r.function_id: r for r in await engine.runs()}
        stale = await engine._worker.store.read(lambda tx: tx.unprocessed_events(10**15, 10))
        names = [e.name for e, _ in await engine.events()]
    assert 0 < first_pass == len(attempts), (first_pass, attempts)
    assert (runs["faults/healthy"].status, runs["faults/healthy"].output) == ("completed", 42)
    assert stale == []
    assert "poison/x" in names                   # kept: nothing stored is lost
