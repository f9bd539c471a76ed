"""Several worker processes on one Postgres database: cron fires once per tick across all of
them, `stepwell worker` processes share the work, and an idle worker is woken by NOTIFY at once
rather than at its next poll."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import psycopg

import stepwell

APP = Path(__file__).with_name("pg_worker_app.py")
DEADLINE_S = 60.0
TICKS = 8


def set_clock(path: Path, instant_ms: int) -> None:
    set_shared_clock: Any = load_app_module().set_clock
    set_shared_clock(path, instant_ms)


@functools.cache
def load_app_module() -> Any:
    spec = importlib.util.spec_from_file_location("pg_worker_app", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_journal(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready" and "running" not in line:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"worker {proc.pid} did not start: {line!r}\n{err}")


def stop_all(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str, str]]:
    """SIGTERM each process; (exit code, rest of stdout, stderr) of each."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results.append((proc.returncode, out, err))
    return results


def test_cron_fires_exactly_once_per_tick_across_three_workers(pg_database: str,
                                                              tmp_path: Path) -> None:
    """Three workers share a virtual clock (a file). Time moves one tick at a time, and only
    once the previous tick's run has recorded itself, so a slow machine makes the test slower,
    never wrong: every tick must fire exactly once, on whichever worker."""
    journal, clock_file = tmp_path / "ticks.jsonl", tmp_path / "clock"
    first_tick = 1_767_225_600_000                 # a minute boundary
    set_clock(clock_file, first_tick - 1_000)       # a second (virtual) before it
    procs = [subprocess.Popen(
        [sys.executable, str(APP), "cron", pg_database, str(journal), str(clock_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        for proc in procs:
            wait_ready(proc)
        for n in range(TICKS):
            set_clock(clock_file, first_tick + n * 60_000)
            deadline = time.monotonic() + DEADLINE_S
            while len(read_journal(journal)) < n + 1:
                assert time.monotonic() < deadline, f"tick {n} did not fire"
                assert all(p.poll() is None for p in procs), "a worker exited"
                time.sleep(0.02)
    finally:
        results = stop_all(procs)
    errors = [err for _, _, err in results]
    assert [code for code, _, _ in results] == [0, 0, 0], errors
    assert not any("ERROR" in e or "Traceback" in e for e in errors), errors
    with closing(psycopg.connect(pg_database)) as conn:
        events = [r[0] for r in conn.execute(
            "SELECT ts FROM events WHERE name = 'inngest/scheduled.timer' ORDER BY ts")]
        runs = conn.execute("SELECT event_id, count(*) FROM runs GROUP BY event_id").fetchall()
    records = read_journal(journal)
    # One event per tick, no tick skipped, one run per event, each step body ran once.
    assert events == [first_tick + n * 60_000 for n in range(TICKS)], events
    assert all(count == 1 for _, count in runs) and len(runs) == TICKS, runs
    executed = Counter(r["event"] for r in records)
    assert len(executed) == TICKS and max(executed.values()) == 1, executed.most_common(3)
    print(f"\n{len(events)} ticks fired by workers {Counter(r['pid'] for r in records)}")


def test_stepwell_worker_processes_share_the_work(pg_database: str, tmp_path: Path) -> None:
    """Two `stepwell worker` processes; events come from a third process that does not work
    (an Engine with worker=False, as `stepwell serve --no-worker` would be)."""
    env = dict(os.environ, PYTHONPATH=str(APP.parent))
    procs = [subprocess.Popen(
        [sys.executable, "-m", "stepwell", "worker", "pg_worker_app:work_app", "--db",
         pg_database], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        cwd=APP.parent) for _ in range(2)]
    try:
        for proc in procs:
            wait_ready(proc)

        async def produce() -> list[stepwell.Run]:
            async with stepwell.Engine(load_app_module().work_app, db=pg_database,
                                       worker=False) as engine:
                ids = [await engine.send("pgwork/job", {"n": n}) for n in range(60)]
                runs = []
                for event_id in ids:
                    deadline = time.monotonic() + DEADLINE_S
                    while not (found := await engine.runs(event_id=str(event_id))) or (
                            found[0].status not in ("completed", "failed")):
                        assert time.monotonic() < deadline, f"run of {event_id} not done"
                        await asyncio.sleep(0.05)
                    runs.append(found[0])
                return runs

        runs = asyncio.run(produce())
    finally:
        results = stop_all(procs)
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    assert all("stepwell worker stopped" in out for _, out, _ in results), results
    assert [r.status for r in runs] == ["completed"] * 60
    assert [r.output["n"] for r in runs] == list(range(60))
    by_pid = Counter(r.output["pid"] for r in runs)
    assert set(by_pid) == {p.pid for p in procs}, f"one worker did all the work: {by_pid}"


async def test_an_idle_worker_is_woken_by_notify_not_by_polling(pg_database: str) -> None:
    app = stepwell.App("wake")
    started = asyncio.Event()

    @app.function(id="f", trigger="wake/go")
    async def f(ctx: stepwell.Context, step: stepwell.Step) -> None:
        started.set()

    # The worker's next poll is an hour away: only NOTIFY can make it start the run within
    # the deadline, however slow the machine (no timing is asserted).
    async with stepwell.Engine(app, db=pg_database, poll_seconds=3600) as worker, \
            stepwell.Engine(app, db=pg_database, worker=False) as producer:
        await asyncio.sleep(0.3)        # let the worker go idle
        assert not worker._worker._sessions
        await producer.send("wake/go", {})
        await asyncio.wait_for(started.wait(), DEADLINE_S)


def test_start_with_a_worker_serves_events_on_postgres(pg_database: str) -> None:
    """`stepwell start` (API + worker) and one `stepwell worker`: an event posted to the API
    runs to completion, and the password never appears in what they print."""
    env = dict(os.environ, PYTHONPATH=str(APP.parent))
    db = pg_database.replace("postgres@", "postgres:hunter2@")   # trust auth ignores it
    server = subprocess.Popen(
        [sys.executable, "-m", "stepwell", "start", "pg_worker_app:work_app", "--db", db,
         "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        cwd=APP.parent)
    worker = subprocess.Popen(
        [sys.executable, "-m", "stepwell", "worker", "pg_worker_app:work_app", "--db", db],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=APP.parent)
    try:
        assert server.stdout is not None
        banner = ""
        while "running at " not in banner:      # after any log lines
            line = server.stdout.readline()
            assert line, f"stepwell start exited: {banner}"
            banner += line
        url = banner.split("running at ")[1].split()[0]
        banner = banner.splitlines()[-1]
        assert "hunter2" not in banner and "postgres:***@" in banner, banner
        wait_ready(worker)
        reply = httpx.post(f"{url}/e/dev", json={"name": "pgwork/job", "data": {"n": 7}})
        event_id = reply.json()["ids"][0]
        deadline = time.monotonic() + DEADLINE_S
        while True:
            found = httpx.get(f"{url}/v1/runs", params={"event_id": event_id}).json()["data"]
            if found and found[0]["status"] == "Completed":
                break
            assert time.monotonic() < deadline, found
            time.sleep(0.05)
        assert found[0]["output"]["n"] == 7
    finally:
        results = stop_all([server, worker])
    assert [code for code, _, _ in results] == [0, 0], results
    assert not any("hunter2" in out for _, out, _ in results)


def test_a_bad_database_url_is_one_line_at_start_up(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(APP.parent))
    bad = "postgresql://postgres:hunter2@127.0.0.1:1/stepwell"
    for command in (["worker"], ["start", "--port", "0"]):
        done = subprocess.run(
            [sys.executable, "-m", "stepwell", command[0], "pg_worker_app:work_app", "--db", bad,
             *command[1:]], capture_output=True, text=True, env=env, cwd=APP.parent,
            timeout=DEADLINE_S)
        assert done.returncode == 1, done
        assert "Traceback" not in done.stderr and "hunter2" not in done.stderr + done.stdout
        assert ("Error: cannot connect to Postgres at postgresql://postgres:***@127.0.0.1:1/"
                "stepwell: connection to server at \"127.0.0.1\", port 1 failed: Connection "
                "refused") in done.stderr, done.stderr
