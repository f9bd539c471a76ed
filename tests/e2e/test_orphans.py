"""Runs of a function that was renamed or deleted: marked once with the reason, logged once per
function (not once per claim), resumed when the function comes back."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

import stepwell
from stepwell.server.app import create_app
from stepwell.service import Service
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


async def test_orphaned_runs_are_a_status_filter_of_the_rest_api(
        make_engine: Any, clock: VirtualClock) -> None:
    """`GET /v1/runs?status=orphaned` lists the unfinished runs of a function no longer
    defined (and only those), with `activity: orphaned`; once the function is back, none."""
    async with make_engine(napper()) as engine:
        orphan = (await engine.runs(event_id=await engine.send("zoo/nap", {})))[0].id
        await engine.idle()
    renamed = napper(fn_id="renamed")
    async with make_engine(renamed) as engine:
        await clock.advance("3h")                       # the orphan wakes and is marked
        # A run of the defined function, sleeping: running, but not orphaned.
        sleeping = (await engine.runs(event_id=await engine.send("zoo/nap", {})))[0].id
        await engine.idle()
        transport = httpx.ASGITransport(app=create_app(Service(engine)))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            listed = (await http.get("/v1/runs", params={"status": "orphaned"})).json()["data"]
            assert [(r["run_id"], r["status"], r["activity"]) for r in listed] == [
                (orphan, "Running", "orphaned")]
            assert "function 'zoo/nap'" in listed[0]["warnings"][0]
            by_fn = (await http.get("/v1/runs", params={
                "status": "Orphaned", "function_id": "zoo/nap"})).json()["data"]
            assert [r["run_id"] for r in by_fn] == [orphan]
            other = (await http.get("/v1/runs", params={
                "status": "orphaned", "function_id": "zoo/renamed"})).json()["data"]
            assert other == []
            bad = await http.get("/v1/runs", params={"status": "orphans"})
            assert bad.status_code == 400 and "orphaned" in bad.json()["error"]
        assert (await engine.get_run(sleeping)) is not None
    async with make_engine(napper()) as engine:     # the function is back: nothing orphaned
        async with httpx.AsyncClient(transport=httpx.ASGITransport(
                app=create_app(Service(engine))), base_url="http://localhost") as http:
            listed = (await http.get("/v1/runs", params={"status": "orphaned"})).json()["data"]
        assert listed == []
