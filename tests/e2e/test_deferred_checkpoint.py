"""A finished step's memo goes with the run's next transaction (RunDriver.defer_checkpoint):
one transaction fewer for the last step of a run, and no weaker guarantees. The memo is
stored before the next step's body starts, and promptly when the handler awaits something
that is not a step; a run whose lease is lost meanwhile writes nothing."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

import stepwell
from stepwell.runtime import driver, scripts, session, worker
from stepwell.testing import VirtualClock

DEADLINE_S = 30.0


def count_commits(engine: stepwell.Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the engine's transaction scripts (`Worker.commit`: ingesting, the runs' own
    writes) from now on; the worker's polls for due work are not among them."""
    worker = engine._worker
    original = worker.commit
    calls = [0]

    async def commit(fn: Any) -> Any:
        calls[0] += 1
        return await original(fn)

    monkeypatch.setattr(worker, "commit", commit)
    return calls


async def one_run(engine: stepwell.Engine, event: object) -> stepwell.Run:
    [listed] = await engine.runs(event_id=str(event))
    run = await engine.get_run(listed.id)
    assert run is not None
    return run


async def until(predicate: Any, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def test_the_last_step_commits_with_the_end(
        make_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    app = stepwell.App("deferred")

    @app.function(id="one", trigger="deferred/one", retries=0)
    async def one(ctx: stepwell.Context, step: stepwell.Step) -> int:
        return int(await step.run("only", lambda: 41)) + 1

    @app.function(id="three", trigger="deferred/three", retries=0)
    async def three(ctx: stepwell.Context, step: stepwell.Step) -> list[int]:
        return [await step.run(f"s{n}", lambda n=n: n) for n in range(3)]

    async with make_engine(app) as engine:
        writes = count_commits(engine, monkeypatch)
        event = await engine.send("deferred/one", {})
        await asyncio.wait_for(engine.idle(), DEADLINE_S)
        assert writes[0] == 2            # the event and its run; the step with the end
        run = await one_run(engine, event)
        assert (run.status, run.output) == ("completed", 42)
        assert [(s.id, s.status, s.output) for s in run.steps] == [("only", "completed", 41)]

        writes[0] = 0
        event = await engine.send("deferred/three", {})
        await asyncio.wait_for(engine.idle(), DEADLINE_S)
        assert writes[0] == 4            # ingest, s0, s1, s2 with the end
        run = await one_run(engine, event)
        assert run.output == [0, 1, 2]
        assert [s.id for s in run.steps] == ["s0", "s1", "s2"]


async def test_a_memo_is_stored_before_the_next_body_starts(make_engine: Any) -> None:
    app = stepwell.App("deferred")
    seen: list[list[str]] = []
    engine_box: list[stepwell.Engine] = []

    async def look() -> str:
        [listed] = await engine_box[0].runs(function_id="deferred/chain")
        run = await engine_box[0].get_run(listed.id)
        assert run is not None
        seen.append([s.id for s in run.steps])
        return "looked"

    @app.function(id="chain", trigger="deferred/chain", retries=0)
    async def chain(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.run("first", lambda: 1)
        return str(await step.run("second", look))

    async with make_engine(app) as engine:
        engine_box.append(engine)
        await engine.send("deferred/chain", {})
        await asyncio.wait_for(engine.idle(), DEADLINE_S)
        [run] = await engine.runs(function_id="deferred/chain")
        assert run.status == "completed", run
    assert seen == [["first"]]           # read by the second body, from the database


async def test_a_memo_is_stored_while_the_handler_awaits_something_else(
        make_engine: Any) -> None:
    app = stepwell.App("deferred")
    release = asyncio.Event()

    @app.function(id="pause", trigger="deferred/pause", retries=0)
    async def pause(ctx: stepwell.Context, step: stepwell.Step) -> int:
        value = int(await step.run("before", lambda: 7))
        await release.wait()             # not a step: the memo must not wait for it
        return value

    async with make_engine(app) as engine:
        event = await engine.send("deferred/pause", {})

        async def stored() -> bool:
            runs = await engine.runs(event_id=str(event))
            run = runs and await engine.get_run(runs[0].id)
            return bool(run) and [s.id for s in run.steps] == ["before"]

        await until(stored, "the step's memo while the handler waits")
        [run] = await engine.runs(event_id=str(event))
        assert run.status == "running"
        release.set()
        done = await engine.wait(run.id, DEADLINE_S)
        assert (done.status, done.output) == ("completed", 7)


@pytest.mark.counts_executions
async def test_a_cancelled_run_writes_no_deferred_memo(
        make_engine: Any, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled while its last memo waits for the run's next transaction: that transaction
    finds the lease gone and writes nothing (the memo included)."""
    app = stepwell.App("deferred")
    taken = asyncio.Event()
    go_on = asyncio.Event()

    @app.function(id="late", trigger="deferred/late", retries=0)
    async def late(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.run("last", lambda: "done")
        taken.set()
        await go_on.wait()
        return "ended"

    # Hold the memo back from the background flush, so the cancel lands first.
    monkeypatch.setattr(driver.RunDriver, "_flush_later", lambda self: None)
    async with make_engine(app) as engine:
        event = await engine.send("deferred/late", {})
        await asyncio.wait_for(taken.wait(), DEADLINE_S)
        [run] = await engine.runs(event_id=str(event))
        await engine.cancel(run.id)
        go_on.set()
        await asyncio.wait_for(engine.idle(), DEADLINE_S)
        found = await engine.get_run(run.id)
        assert found is not None and found.status == "cancelled", found
        assert found.steps == []
        assert found.output is None


@pytest.mark.counts_executions
async def test_a_memo_waiting_when_stepwell_fails_at_the_next_step_is_kept(
        make_engine: Any, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """stepwell's own code fails at the next step before anything yields: the execution ends
    on that engine fault, and the finished step's memo is still committed (the step is not
    run again when the run is retried), by the session itself, not by a write outliving it."""
    app = stepwell.App("deferred")
    ran: list[str] = []

    @app.function(id="fault", trigger="deferred/fault", retries=2)
    async def fault(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.run("a", lambda: ran.append("a") or "A")
        return str(await step.run("b", lambda: ran.append("b") or "B"))

    original = session.RunSession._run
    failures = [0]

    async def failing_run(self: Any, request: Any, *args: Any) -> Any:
        if request.step_id == "b" and failures[0] == 0:
            failures[0] += 1
            raise RuntimeError("injected fault before step b")
        return await original(self, request, *args)

    monkeypatch.setattr(session.RunSession, "_run", failing_run)
    async with make_engine(app) as engine:
        event = await engine.send("deferred/fault", {})
        await asyncio.wait_for(engine.idle(), DEADLINE_S)
        run = await one_run(engine, event)
        assert failures == [1] and run.status == "running", run
        assert [(s.id, s.status) for s in run.steps if s.id == "a"] == [("a", "completed")]
        for _ in range(3):                   # the engine fault's backoff
            await clock.advance("1h")
            await asyncio.wait_for(engine.idle(), DEADLINE_S)
        run = await one_run(engine, event)
    assert (run.status, run.output) == ("completed", "B"), run
    assert ran == ["a", "b"]                 # "a" ran once: its memo survived the fault


@pytest.mark.counts_executions
async def test_a_lease_lost_while_a_parallel_branch_waits_stops_quietly(
        make_engine: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """One branch waits for an event; the other's step finishes after the lease was lost (as
    when another process presumed this one dead). Handing the run back carries that memo
    under the lease, finds it gone, and the session stops as for any lost lease: reported as
    such, not as a crash, and the memo is not written by this execution."""
    app = stepwell.App("deferred")
    started = asyncio.Event()
    finish = threading.Event()
    loop = asyncio.get_running_loop()
    calls: list[str] = []

    def prep() -> str:
        calls.append("prep")
        loop.call_soon_threadsafe(started.set)
        finish.wait(DEADLINE_S)
        return "prepared"

    @app.function(id="branches", trigger="deferred/branches", retries=0)
    async def branches(ctx: stepwell.Context, step: stepwell.Step) -> Any:
        return await asyncio.gather(
            step.wait_for_event("never", event="deferred/never", timeout="1h"),
            step.run("prep", prep))

    monkeypatch.setattr(driver.RunDriver, "_flush_later", lambda self: None)
    async with make_engine(app) as engine:
        await engine.send("deferred/branches", {})
        await asyncio.wait_for(started.wait(), DEADLINE_S)
        worker, now = engine._worker, engine._worker.clock.now()
        wall = int(time.time() * 1000)

        def taken_over(tx: Any) -> int:         # another process now holds the run
            tx.release_leases_of(worker.owner)
            return len(tx.claim_due(now, "another-process", wall + 600_000, 10))

        assert await worker.store.write(taken_over) == 1
        with caplog.at_level(logging.INFO, logger="stepwell"):
            finish.set()
            await asyncio.wait_for(engine.idle(), DEADLINE_S)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert any("lease lost" in r.getMessage() for r in caplog.records), caplog.text


@pytest.mark.counts_executions
async def test_a_memo_whose_carrying_transaction_fails_is_written_after_all(
        make_engine: Any, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's end carries the last step's memo, and the end script fails (rolled back):
    the memo is kept for the execution's next write, here the one it makes as it ends, so
    the step is not run again when the run is retried."""
    app = stepwell.App("deferred")
    ran: list[str] = []

    @app.function(id="end-fault", trigger="deferred/end-fault", retries=2)
    async def end_fault(ctx: stepwell.Context, step: stepwell.Step) -> str:
        return str(await step.run("only", lambda: ran.append("only") or "done"))

    original = scripts.end_run
    failures = [0]

    def failing_end(*args: Any, **kwargs: Any) -> bool:
        if failures[0] < 2:          # the group's attempt, then the script's own (groupcommit)
            failures[0] += 1
            raise RuntimeError("injected end script fault")
        return original(*args, **kwargs)

    monkeypatch.setattr(scripts, "end_run", failing_end)
    async with make_engine(app) as engine:
        event = await engine.send("deferred/end-fault", {})
        await asyncio.wait_for(engine.idle(), DEADLINE_S)
        for _ in range(3):                   # the engine fault's backoff
            await clock.advance("1h")
            await asyncio.wait_for(engine.idle(), DEADLINE_S)
        run = await one_run(engine, event)
    assert failures == [2]
    assert (run.status, run.output) == ("completed", "done"), run
    assert ran == ["only"]


@pytest.mark.counts_executions
async def test_a_memo_committed_before_a_failure_acting_on_effects_is_not_written_again(
        make_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The transaction carrying a deferred memo commits, then acting on its effects fails and
    the handler swallows the error: the memo is stored, so the run's end must not try to
    write it again (an insert-once that fails would look like a lost lease and leave the run
    unfinished)."""
    app = stepwell.App("deferred")
    armed = [False]
    raised: list[str] = []

    async def first() -> str:
        armed[0] = True                      # the next commit of this run carries this memo
        return "A"

    @app.function(id="swallow", trigger="deferred/swallow", retries=0)
    async def swallow(ctx: stepwell.Context, step: stepwell.Step) -> str:
        value = str(await step.run("a", first))
        try:
            await step.publish("progress", {"done": "a"})
        except RuntimeError as exc:
            raised.append(str(exc))
        return value

    original = worker.Worker._apply

    def failing_apply(self: Any, effects: Any) -> None:
        original(self, effects)
        if armed[0]:
            armed[0] = False
            raise RuntimeError("injected effects fault")

    monkeypatch.setattr(worker.Worker, "_apply", failing_apply)
    async with make_engine(app) as engine:
        event = await engine.send("deferred/swallow", {})
        await asyncio.wait_for(engine.idle(), DEADLINE_S)
        run = await one_run(engine, event)
    assert raised == ["injected effects fault"]
    assert (run.status, run.output) == ("completed", "A"), run
    assert [s.id for s in run.steps if s.kind == "run"] == ["a"]


@pytest.mark.counts_executions
async def test_a_step_then_a_sleep_in_memory_then_a_step(
        make_engine: Any, clock: VirtualClock) -> None:
    """The sleep's own transaction carries the step before it; the run then sleeps in memory
    (a short sleep, leased ahead) with both recorded, and resumes without running it again."""
    app = stepwell.App("deferred")
    ran: list[str] = []

    @app.function(id="nap", trigger="deferred/nap", retries=0)
    async def nap(ctx: stepwell.Context, step: stepwell.Step) -> str:
        first = str(await step.run("before", lambda: ran.append("before") or "B"))
        await step.sleep("nap", "2s")
        return first + str(await step.run("after", lambda: ran.append("after") or "A"))

    async with make_engine(app) as engine:
        event = await engine.send("deferred/nap", {})
        await asyncio.wait_for(engine.idle(), DEADLINE_S)
        run = await one_run(engine, event)
        assert run.status == "running"
        assert [(s.id, s.status) for s in run.steps] == [("before", "completed"),
                                                          ("nap", "sleeping")]
        await clock.advance("2s")
        await asyncio.wait_for(engine.idle(), DEADLINE_S)
        run = await one_run(engine, event)
    assert (run.status, run.output) == ("completed", "BA"), run
    assert ran == ["before", "after"]


@pytest.mark.counts_executions
async def test_an_error_after_a_step_is_retried_with_the_step_kept(
        make_engine: Any, clock: VirtualClock) -> None:
    """The handler fails after its step (outside any step): the failed attempt's record
    carries the step's memo, and the retry replays the step instead of running it again."""
    app = stepwell.App("deferred")
    ran: list[str] = []
    attempts: list[int] = []

    @app.function(id="flaky", trigger="deferred/flaky", retries=2)
    async def flaky(ctx: stepwell.Context, step: stepwell.Step) -> str:
        value = str(await step.run("once", lambda: ran.append("once") or "V"))
        attempts.append(ctx.attempt)
        if len(attempts) == 1:
            raise ValueError("fails the first time, after the step")
        return value

    async with make_engine(app) as engine:
        event = await engine.send("deferred/flaky", {})
        await asyncio.wait_for(engine.idle(), DEADLINE_S)
        run = await one_run(engine, event)
        assert run.status == "running"
        assert [(s.id, s.status) for s in run.steps if s.id == "once"] == [("once",
                                                                            "completed")]
        for _ in range(3):                   # the retry's backoff
            await clock.advance("1h")
            await asyncio.wait_for(engine.idle(), DEADLINE_S)
        run = await one_run(engine, event)
    assert (run.status, run.output) == ("completed", "V"), run
    assert ran == ["once"]
    assert attempts == [0, 1]
