"""Versioned workers on Postgres, with real worker processes of two versions of one app.

`versioned_app.py` runs a worker of `App("shop", version=$SHOP_VERSION)`. The test sends events
from this process through non-executing engines of each version (so the runs record the
version of the code that created them) and watches where each run goes:

1. v1 runs in flight (waiting for an event) stay with the v1 worker while a v2 worker takes the
   new runs; resumed while v1 lives, they finish on v1 (pinned and auto alike).
2. The v1 worker is SIGKILLed mid-drain, holding runs that sleep. Its registry row and leases
   go at once (same host, pid gone). Then: the `auto` run moves to v2 (its history replays
   cleanly on v2) and finishes there; the `diverging` auto run stays on v1 (the check fails),
   marked; the `pinned` run stays on v1; `stepwell versions` shows v1 *stranded*.
3. A new v1 worker finishes the stranded runs on v1, and v1 shows *drained*.

Every wait polls a condition with a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest

import stepwell
from stepwell.service import Service

APP = Path(__file__).with_name("versioned_app.py")


def _load_app_module() -> Any:
    spec = importlib.util.spec_from_file_location("versioned_app", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_app: Callable[..., stepwell.App] = _load_app_module().make_app
DEADLINE_S = 60.0


class Workers:
    """The worker processes a test started (each stopped, or killed, at the end)."""

    def __init__(self, db: str, tmp: Path) -> None:
        self.db, self.tmp, self.procs = db, tmp, list[subprocess.Popen[str]]()

    def start(self, version: str) -> subprocess.Popen[str]:
        with (self.tmp / f"worker-{len(self.procs)}-{version}.stderr").open("w") as err:
            proc = subprocess.Popen([sys.executable, str(APP), self.db],
                                    stdout=subprocess.PIPE, stderr=err, text=True,
                                    env={**os.environ, "SHOP_VERSION": version})
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"worker {version} did not start: {line!r}\n" + (
            self.tmp / f"worker-{len(self.procs) - 1}-{version}.stderr").read_text()
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def workers(pg_database: str, tmp_path: Path) -> Iterator[Workers]:
    started = Workers(pg_database, tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


async def until(what: str, check: Callable[[], Any], deadline: float) -> Any:
    """Poll `check` (sync or async) until it returns something truthy, or fail naming `what`."""
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def sql(db: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with closing(psycopg.connect(db, autocommit=True)) as conn:
        return conn.execute(query, args).fetchall()


async def test_old_workers_drain_and_a_killed_one_leaves_each_run_to_its_policy(
        workers: Workers, pg_database: str) -> None:
    db, deadline = pg_database, time.monotonic() + DEADLINE_S
    v1_sender = stepwell.Engine(make_app("v1"), db=db, worker=False)
    v2_sender = stepwell.Engine(make_app("v2"), db=db, worker=False)
    async with v1_sender, v2_sender:
        service = Service(v2_sender)

        async def run_of(event_id: str) -> stepwell.Run:
            [run] = await v2_sender.runs(event_id=event_id)
            return run

        async def completed(event_id: str) -> stepwell.Run | None:
            run = await run_of(event_id)
            assert run.status in ("queued", "running", "completed"), run
            return run if run.status == "completed" else None

        async def waiting(event_id: str) -> bool:
            rows = sql(db, "SELECT count(*) FROM waits w JOIN runs r ON r.id = w.run_id "
                           "WHERE r.event_id = %s", event_id)
            return rows[0][0] == 1

        old_worker = workers.start("v1")
        # v1 runs that wait for an event: two of each policy, one diverging.
        started = {}
        for name, fn in [("p1", "pinned"), ("p2", "pinned"), ("a1", "auto"), ("a2", "auto"),
                         ("d1", "diverging")]:
            started[name] = await v1_sender.send(f"shop/{fn}", {"wait": True, "key": name})
        for name, event_id in started.items():
            await until(f"{name} waiting", lambda e=event_id: waiting(e), deadline)

        new_worker = workers.start("v2")
        fresh = await v2_sender.send("shop/auto", {})
        done = await until("the new run done", lambda: completed(fresh), deadline)
        assert (done.version, done.output) == ("v2", {"started": "v2", "finished": "v2"})

        [pinned_fn] = [f for f in await service.versions() if f["function_id"] == "shop/pinned"]
        by_version = {v["version"]: v for v in pinned_fn["versions"]}
        assert by_version["v1"]["runs"] == 2 and by_version["v1"]["state"] == "draining"
        assert [w["pid"] for w in by_version["v1"]["workers"]] == [old_worker.pid]
        assert [w["pid"] for w in by_version["v2"]["workers"]] == [new_worker.pid]
        assert by_version["v2"]["state"] == "current" and not pinned_fn["drained"]

        # Resumed while the v1 worker lives, v1 runs finish on v1 (auto ones too).
        for name in ("p1", "a1"):
            await v1_sender.send("shop/go", {"key": name})
        for name in ("p1", "a1"):
            run = await until(f"{name} done", lambda n=name: completed(started[n]), deadline)
            assert (run.version, run.output) == ("v1", {"started": "v1", "finished": "v1"})

        # Resume the rest: they sleep (COOL_OFF) in the v1 worker; kill it mid-drain.
        for name in ("p2", "a2", "d1"):
            await v1_sender.send("shop/go", {"key": name})

        def held_by_old() -> bool:
            rows = sql(db, "SELECT count(*) FROM queue q JOIN runs r ON r.id = q.run_id "
                           "JOIN memos m ON m.run_id = r.id AND m.step_id = 'cool-off' "
                           "WHERE q.kind = 'exec' AND q.owner LIKE %s AND r.event_id = ANY(%s)",
                       f"%:{old_worker.pid}:%", [started[n] for n in ("p2", "a2", "d1")])
            return rows[0][0] == 3

        await until("the v1 worker holding the sleeping runs", held_by_old, deadline)
        old_worker.send_signal(signal.SIGKILL)
        old_worker.wait()

        # auto: moved to v2 (its history replays cleanly there) and finished there.
        moved = await until("a2 moved and done", lambda: completed(started["a2"]), deadline)
        assert (moved.version, moved.output) == ("v2", {"started": "v1", "finished": "v2"})
        assert any("moved from v1 to v2" in w for w in moved.warnings), moved.warnings

        # diverging: the check refuses the move; it stays on v1, marked.
        async def flagged() -> stepwell.Run | None:
            run = await run_of(started["d1"])
            return run if any("stays on v1" in w for w in run.warnings) else None

        stuck = await until("d1 flagged as staying on v1", flagged, deadline)
        assert stuck.status == "running" and stuck.version == "v1"
        assert any("changed-args" in w for w in stuck.warnings), stuck.warnings

        # pinned: its sleep is over (it was due with a2's), yet no v2 worker touched it.
        pinned = await run_of(started["p2"])
        assert pinned.status == "running" and pinned.version == "v1", pinned
        shown = await v2_sender.get_run(pinned.id)
        assert shown is not None and [s.id for s in shown.steps] == ["start", "go", "cool-off"]

        [pinned_fn] = [f for f in await service.versions() if f["function_id"] == "shop/pinned"]
        by_version = {v["version"]: v for v in pinned_fn["versions"]}
        assert by_version["v1"]["runs"] == 1, by_version
        assert (by_version["v1"]["state"], by_version["v1"]["workers"]) == ("stranded", [])

        # A new v1 worker finishes the stranded runs on v1; then v1 has drained.
        workers.start("v1")
        for name in ("p2", "d1"):
            run = await until(f"{name} done on v1", lambda n=name: completed(started[n]),
                              deadline)
            assert (run.version, run.output) == ("v1", {"started": "v1", "finished": "v1"})
        for fn in await service.versions():
            states = {v["version"]: (v["state"], v["runs"]) for v in fn["versions"]}
            assert states.get("v1", ("drained", 0)) == ("drained", 0), (fn["function_id"], states)
            assert fn["drained"], fn


async def test_on_sqlite_a_stopped_version_leaves_auto_runs_to_the_new_one(
        tmp_path: Path) -> None:
    """In one process, on SQLite: engines of v1 and v2 side by side. v1 stops cleanly (its
    registry rows go with it); the events resuming its runs are stored by the v2 engine, which
    leases them to itself at once (the fast path) and must hand back what it may not take."""
    db, deadline = f"sqlite:///{tmp_path / 'shop.db'}", time.monotonic() + DEADLINE_S
    options: dict[str, Any] = {"db": db, "lease_seconds": 0.6, "poll_seconds": 0.1}
    v2 = stepwell.Engine(make_app("v2", cool_off="10ms"), **options)
    async with v2:
        async def completed(event_id: str) -> stepwell.Run | None:
            [run] = await v2.runs(event_id=event_id)
            return run if run.status == "completed" else None

        async def waiting(event_id: str) -> bool:
            [listed] = await v2.runs(event_id=event_id)
            run = await v2.get_run(listed.id)
            assert run is not None
            return any(s.id == "go" and s.status == "waiting" for s in run.steps)

        async with stepwell.Engine(make_app("v1", cool_off="10ms"), **options) as v1:
            started = {fn: await v1.send(f"shop/{fn}", {"wait": True, "key": fn})
                       for fn in ("pinned", "auto", "diverging")}
            for fn, event_id in started.items():
                await until(f"{fn} waiting", lambda e=event_id: waiting(e), deadline)
            fresh = await v2.send("shop/auto", {})
            done = await until("the v2 run", lambda: completed(fresh), deadline)
            assert done.output == {"started": "v2", "finished": "v2"}
            [auto_fn] = [f for f in await Service(v2).versions() if f["function_id"] ==
                         "shop/auto"]
            states = {v["version"]: (v["state"], v["runs"], len(v["workers"]))
                      for v in auto_fn["versions"]}
            assert states == {"v1": ("draining", 1, 1), "v2": ("current", 0, 1)}
            # Resumed by an event the v2 engine stores (and so leases to itself at once),
            # a v1 run still goes back to the live v1 worker.
            early = await v1.send("shop/auto", {"wait": True, "key": "early"})
            await until("early waiting", lambda: waiting(early), deadline)
            await v2.send("shop/go", {"key": "early"})
            run = await until("early on v1", lambda: completed(early), deadline)
            assert (run.version, run.output) == ("v1", {"started": "v1", "finished": "v1"})
        for fn in started:
            await v2.send("shop/go", {"key": fn})
        moved = await until("auto moved", lambda: completed(started["auto"]), deadline)
        assert (moved.version, moved.output) == ("v2", {"started": "v1", "finished": "v2"})

        async def refused() -> bool:
            [run] = await v2.runs(event_id=started["diverging"])
            return any("stays on v1" in w for w in run.warnings)

        await until("diverging refused", refused, deadline)
        for fn in ("pinned", "diverging"):
            [run] = await v2.runs(event_id=started[fn])
            assert (run.status, run.version) == ("running", "v1"), run
            shown = await v2.get_run(run.id)
            assert shown is not None and not any(s.id == "finish" for s in shown.steps)
        [pinned_fn] = [f for f in await Service(v2).versions()
                       if f["function_id"] == "shop/pinned"]
        assert {v["version"]: v["state"] for v in pinned_fn["versions"]} == {
            "v1": "stranded", "v2": "current"}
        async with stepwell.Engine(make_app("v1", cool_off="10ms"), **options):
            for fn in ("pinned", "diverging"):
                run = await until(f"{fn} on v1", lambda f=fn: completed(started[f]), deadline)
                assert (run.version, run.output) == ("v1", {"started": "v1", "finished": "v1"})


def test_upgrade_must_be_auto_or_pinned() -> None:
    with pytest.raises(stepwell.ConfigError, match="upgrade must be 'auto'"):
        stepwell.App("x", upgrade="sometimes")
    app = stepwell.App("x", upgrade="pinned")
    with pytest.raises(stepwell.ConfigError, match="function 'f': upgrade must be"):
        app.function(id="f", trigger="x/y", upgrade="never")

    @app.function(id="g", trigger="x/g")
    async def g(ctx: stepwell.Context, step: stepwell.Step) -> None: ...

    @app.function(id="h", trigger="x/h", upgrade="auto", on_failure=lambda ctx, step: None)
    async def h(ctx: stepwell.Context, step: stepwell.Step) -> None: ...

    assert (g.spec.upgrade, h.spec.upgrade, app.functions["h-failure"].spec.upgrade) == (
        "pinned", "auto", "auto")
    assert stepwell.App("y").upgrade == "auto"


async def test_a_worker_elsewhere_counts_while_its_heartbeat_is_fresh(tmp_path: Path) -> None:
    """Registry rows of another host: a fresh one keeps its version live (its auto runs are not
    adopted), one silent for three lease periods is expired, and then they are."""
    from stepwell.runtime.clock import wall_ms
    from stepwell.store.base import WorkerRow

    db, deadline = f"sqlite:///{tmp_path / 'shop.db'}", time.monotonic() + DEADLINE_S
    options: dict[str, Any] = {"db": db, "lease_seconds": 0.6, "poll_seconds": 0.1}
    async with stepwell.Engine(make_app("v1", cool_off="10ms"), **options) as v1:
        event_id = await v1.send("shop/auto", {"wait": True, "key": "k"})
        [run] = await v1.runs(event_id=event_id)

        async def waiting() -> bool:
            shown = await v1.get_run(run.id)
            return shown is not None and any(s.id == "go" and s.status == "waiting"
                                             for s in shown.steps)

        await until("the run waiting", waiting, deadline)
        # A v1 worker on another host, registered before any v2 worker looks.
        await v1._worker.store.write(lambda tx: tx.register_workers(
            [WorkerRow("far:1:a", "shop", "v1", "elsewhere", 1, wall_ms(), wall_ms())]))
    async with stepwell.Engine(make_app("v2", cool_off="10ms"), **options) as v2:
        store = v2._worker.store
        await v2.send("shop/go", {"key": "k"})

        async def heartbeat_then_state() -> tuple[str | None, int]:
            shown = await v2.get_run(run.id)
            assert shown is not None
            assert shown.version == "v1" or shown.status == "completed", shown
            workers = await store.read(lambda tx: tx.list_workers())
            finished = [s.id for s in shown.steps if s.id == "finish"]
            return (shown.status if not finished else "finished"), len(
                [w for w in workers if w.host == "elsewhere"])

        # A few maintenance passes (each 0.2 s) with the far worker alive: the run stays.
        await until("v2 registered", lambda: store.read(lambda tx: [
            w for w in tx.list_workers() if w.version == "v2"]), deadline)
        passes_end = time.monotonic() + 0.6
        while time.monotonic() < passes_end:
            await store.write(lambda tx: tx.heartbeat_worker("far:1:a", wall_ms()))
            assert await heartbeat_then_state() == ("running", 1)
            await asyncio.sleep(0.05)
        # Its heartbeat stops: expired after three leases (1.8 s), then the run moves to v2.
        moved = await until("the run moved", lambda: _completed(v2, event_id), deadline)
        assert (moved.version, moved.output) == ("v2", {"started": "v1", "finished": "v2"})
        assert (await heartbeat_then_state())[1] == 0


async def _completed(engine: stepwell.Engine, event_id: str) -> stepwell.Run | None:
    [run] = await engine.runs(event_id=event_id)
    return run if run.status == "completed" else None
