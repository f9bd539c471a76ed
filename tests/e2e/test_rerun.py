"""Replaying a run (`engine.replay`, `POST /v1/runs/{id}/replay`, `stepwell runs replay`): a new
run with the same events, from the start or from a step (reusing the results before it)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

import stepwell
from stepwell.testing import VirtualClock


def three_steps(calls: Counter[str]) -> stepwell.App:
    app = stepwell.App("t")

    def body(name: str, n: int) -> int:
        calls[name] += 1
        return n + 1

    @app.function(id="chain", trigger="t/go")
    async def chain(ctx: stepwell.Context, step: stepwell.Step) -> list[int]:
        a = await step.run("a", body, "a", ctx.event.data["n"])
        await step.sleep("pause", "1h")
        b = await step.run("b", body, "b", a)
        c = await step.run("c", body, "c", b)
        return [a, b, c]

    return app


async def first_run(engine: stepwell.Engine, clock: VirtualClock) -> stepwell.Run:
    [run] = await engine.runs(event_id=await engine.send("t/go", {"n": 1}))
    await clock.advance("1h")
    return await engine.wait(run.id)


async def test_replay_runs_everything_again_with_the_same_event(make_engine: Any,
                                                               clock: VirtualClock) -> None:
    calls: Counter[str] = Counter()
    async with make_engine(three_steps(calls)) as engine:
        original = await first_run(engine, clock)
        new_id = await engine.replay(original.id)
        assert new_id is not None and new_id != original.id
        await clock.advance("1h")
        replayed = await engine.wait(new_id)
    assert replayed.status == "completed" and replayed.output == original.output == [2, 3, 4]
    assert replayed.event_id == original.event_id
    assert replayed.replay_of == original.id and original.replay_of is None
    assert calls == Counter(a=2, b=2, c=2)


async def test_replay_from_a_step_reuses_what_came_before(make_engine: Any,
                                                         clock: VirtualClock) -> None:
    calls: Counter[str] = Counter()
    async with make_engine(three_steps(calls)) as engine:
        original = await first_run(engine, clock)
        new_id = await engine.replay(original.id, from_step="b")
        assert new_id is not None
        replayed = await engine.wait(new_id)       # the sleep before "b" is not slept again
    assert replayed.output == [2, 3, 4]
    assert calls == Counter(a=1, b=2, c=2)
    assert [s.id for s in replayed.steps] == ["a", "pause", "b", "c"]


async def test_bad_replays_name_what_is_wrong(make_engine: Any, clock: VirtualClock) -> None:
    calls: Counter[str] = Counter()
    async with make_engine(three_steps(calls)) as engine:
        original = await first_run(engine, clock)
        with pytest.raises(ValueError, match=r"no step 'nope'.*a, pause, b, c"):
            await engine.replay(original.id, from_step="nope")
        with pytest.raises(ValueError, match="no run with id 'missing'"):
            await engine.replay("missing")
        assert len(await engine.runs()) == 1          # nothing was created
