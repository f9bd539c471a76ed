"""Runs of a function that was renamed or deleted: marked once with the reason, logged once per
function (not once per claim), resumed when the function comes back."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import stepwell
from stepwell.testing import VirtualClock


def napper(app_name: str = "zoo", fn_id: str = "nap") -> stepwell.App:
    app = stepwell.App(app_name)

    @app.function(id=fn_id, trigger="zoo/nap")
    async def nap(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.sleep("rest", "1h")
        return "rested"

    return app


async def test_orphaned_runs_are_marked_logged_once_and_resume(
        make_engine: Any, clock: VirtualClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with make_engine(napper()) as engine:
        run_ids = [(await engine.runs(event_id=await engine.send("zoo/nap", {})))[0].id
                   for _ in range(3)]
        await engine.idle()
    # The code changed: the function is gone (renamed). Its runs wake up with nobody to run them.
    async with make_engine(napper(fn_id="renamed")) as engine:
        await clock.advance("3h")
        runs = [await engine.get_run(run_id) for run_id in run_ids]
        assert all(r is not None and r.status == "running" for r in runs)
        for run in runs:
            assert run is not None
            [warning] = [w for w in run.warnings if w.startswith("orphaned:")]
            assert "function 'zoo/nap'" in warning and "stepwell runs cancel" in warning
        logged = [r for r in caplog.records
                  if "waiting for a worker that defines it" in r.getMessage()]
        assert len(logged) == 1 and "zoo/nap" in logged[0].getMessage()
    # The function comes back: its runs resume where they were.
    async with make_engine(napper()) as engine:
        await clock.advance("2m")
        done = [await engine.wait(run_id, timeout=10) for run_id in run_ids]
    assert [r.status for r in done] == ["completed"] * 3
    assert [r.output for r in done] == ["rested"] * 3
