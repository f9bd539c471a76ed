"""Retention: finished runs, unreferenced events and expired flow-control state are pruned after
`retention`; nothing a live run, batch or debounce window needs is touched."""

from __future__ import annotations

from typing import Any

import pytest

import stepwell
from stepwell.core.config import ConfigError
from stepwell.testing import VirtualClock


def app_with_sleeper() -> stepwell.App:
    app = stepwell.App("t")

    @app.function(id="quick", trigger="t/quick")
    async def quick(ctx: stepwell.Context, step: stepwell.Step) -> int:
        return int(await step.run("one", lambda: 1))

    @app.function(id="slow", trigger="t/slow")
    async def slow(ctx: stepwell.Context, step: stepwell.Step) -> Any:
        await step.sleep("long", "30d")
        return ctx.event.data

    return app


async def test_old_finished_runs_and_their_events_are_pruned(make_engine: Any,
                                                             clock: VirtualClock) -> None:
    async with make_engine(app_with_sleeper(), retention="7d") as engine:
        old_event = await engine.send("t/quick", {"n": 1})
        [old] = await engine.runs(event_id=old_event)
        slow_event = await engine.send("t/slow", {"keep": "me"})
        [slow] = await engine.runs(event_id=slow_event)
        orphan = await engine.send("t/nobody-listens", {})
        await engine.wait(old.id)
        await clock.advance("6d")
        recent_event = await engine.send("t/quick", {"n": 2})
        [recent] = await engine.runs(event_id=recent_event)
        await engine.wait(recent.id)
        assert await engine.prune() == {"runs": 0, "events": 0, "flow_state": 0}
        await clock.advance("1d1s")
        deleted = await engine.prune()
        assert deleted["runs"] == 1 and deleted["events"] == 2     # old run's event + orphan
        assert await engine.get_run(old.id) is None
        assert await engine.get_event(old_event) is None
        assert await engine.get_event(orphan) is None
        assert (await engine.get_run(recent.id)) is not None
        assert (await engine.get_event(recent_event)) is not None
        # The sleeping run and its event are untouched, and it still finishes with its event.
        assert (await engine.get_event(slow_event)) is not None
        await clock.advance("30d")
        slow_run = await engine.wait(slow.id)
        assert slow_run.status == "completed" and slow_run.output == {"keep": "me"}
        await clock.advance("8d")
        await engine.prune()
        assert await engine.get_run(slow.id) is None
        assert await engine.get_event(slow_event) is None


async def test_pruning_works_through_many_batches(make_engine: Any, clock: VirtualClock) -> None:
    async with make_engine(app_with_sleeper(), retention="1d") as engine:
        ids = await engine.send([{"name": "t/quick", "data": {"n": n}} for n in range(1_200)])
        assert isinstance(ids, list)
        await engine.idle()
        assert len(await engine.runs(status="completed", limit=2_000)) == 1_200
        await clock.advance("2d")
        deleted = await engine.prune()
        assert deleted["runs"] == 1_200 and deleted["events"] == 1_200
        assert await engine.runs(limit=10) == []


async def test_expired_idempotency_keys_are_pruned_and_do_not_block(
        make_engine: Any, clock: VirtualClock) -> None:
    app = stepwell.App("t")

    @app.function(id="once", trigger="t/pay", idempotency="event.data.order")
    async def once(ctx: stepwell.Context, step: stepwell.Step) -> None:
        return None

    async with make_engine(app, retention="1d") as engine:
        await engine.send("t/pay", {"order": 7})
        await engine.idle()
        await clock.advance("25h")
        deleted = await engine.prune()
        assert deleted["flow_state"] == 1
        event_id = await engine.send("t/pay", {"order": 7})       # a new day: runs again
        [run] = await engine.runs(event_id=event_id)
        assert (await engine.wait(run.id)).status == "completed"


async def test_an_event_held_by_a_debounce_window_is_kept(make_engine: Any,
                                                          clock: VirtualClock) -> None:
    app = stepwell.App("t")

    @app.function(id="deb", trigger="t/typing", debounce={"period": "3d"})
    async def deb(ctx: stepwell.Context, step: stepwell.Step) -> Any:
        return ctx.event.data

    async with make_engine(app, retention="1d") as engine:
        event_id = await engine.send("t/typing", {"text": "hello"})
        await clock.advance("2d")
        await engine.prune()
        assert await engine.get_event(event_id) is not None
        await clock.advance("1d")
        [run] = await engine.runs(event_id=event_id)
        run = await engine.wait(run.id)
    assert run.output == {"text": "hello"}


async def test_retention_none_keeps_everything(make_engine: Any, clock: VirtualClock) -> None:
    async with make_engine(app_with_sleeper(), retention=None) as engine:
        event_id = await engine.send("t/quick", {})
        await engine.idle()
        await clock.advance("400d")
        assert await engine.prune() == {"runs": 0, "events": 0, "flow_state": 0}
        assert await engine.get_event(event_id) is not None


@pytest.mark.parametrize(("value", "message"), [
    ("1h", "at least 1 day"),
    ("soon", "retention"),
    (-5, "retention"),
])
def test_bad_retention_is_refused(value: Any, message: str) -> None:
    with pytest.raises((ConfigError, ValueError)) as info:
        stepwell.Engine(app_with_sleeper(), db="sqlite:///:memory:", retention=value)
    assert message in str(info.value)
