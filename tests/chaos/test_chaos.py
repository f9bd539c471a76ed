"""Chaos on Postgres: 4 worker processes, 1,000 runs, random SIGKILLs and a Postgres restart.

Run by `bash .ci/slow` (marked `slow`). Each run (`chaos_app.py`) executes five step bodies, a
real 100 ms sleep and a wait for a `chaos/resume` event. This test is the producer: an engine
that does not work (`worker=False`) sends the 1,000 `chaos/go` events (ids `evt-N`) and, as waits
get registered, the matching `chaos/resume` events (ids `resume-N`). Meanwhile it SIGKILLs a
random worker every 0.2-0.8 s and starts a new one after a random pause (so leases are taken
over both by a restarted process on this host and by expiry), and restarts Postgres once, when
about 40% of the runs have completed. Then it checks, against the database and the workers'
journals:

- every acknowledged event is stored, and each `chaos/go` started exactly one run;
- every run completed with the output its event determines;
- every step has exactly one committed result, produced by an execution that ran to its end;
- a step body ran more than once only where that is allowed: in a process that was killed, or
  in one that was told its lease had been taken over (leases expire while Postgres restarts).

It prints the number of kills and of re-executed step bodies. `STEPWELL_CHAOS_SEED` replays one.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

import stepwell

pytestmark = pytest.mark.slow

APP = Path(__file__).with_name("chaos_app.py")
SEED = int(os.environ.get("STEPWELL_CHAOS_SEED", "1234"))
RUNS = 1000
WORKERS = 4
KILL_EVERY_S = (0.2, 0.8)
RESTART_AFTER_S = (0.0, 1.5)
RESTART_POSTGRES_AT = 0.4             # fraction of runs completed
DEADLINE_S = 900.0
T = TypeVar("T")


def _load_app_module() -> Any:
    spec = importlib.util.spec_from_file_location("chaos_app", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ca = _load_app_module()


def retrying(fn: Callable[[], T], what: str) -> T:
    """A query of the test's own that must survive the Postgres restart."""
    deadline = time.monotonic() + 120
    while True:
        try:
            return fn()
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: Postgres did not come back") from None
            time.sleep(0.2)


@dataclass
class Cluster:
    db: str
    tmp: Path
    rng: random.Random
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    killed: list[int] = field(default_factory=list)
    stderr: dict[int, Path] = field(default_factory=dict)
    postgres_restart_s: float | None = None
    start_failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def journal(self) -> Path:
        return self.tmp / "journal.jsonl"

    def spawn(self) -> None:
        err = self.tmp / f"worker-{len(self.stderr)}.stderr"
        with err.open("wb") as sink:
            proc = subprocess.Popen([sys.executable, str(APP), self.db, str(self.journal)],
                                    stdout=subprocess.DEVNULL, stderr=sink)
        with self.lock:
            self.procs[proc.pid] = proc
            self.stderr[proc.pid] = err

    def kill_one(self) -> None:
        with self.lock:
            alive = [p for p in self.procs.values() if p.poll() is None]
            if not alive:
                return
            victim = self.rng.choice(alive)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            self.killed.append(victim.pid)
            del self.procs[victim.pid]

    def supervise(self) -> None:
        """Like a process supervisor: a worker that could not connect at start-up (Postgres was
        restarting) is started again. Any other exit is left for the final checks."""
        with self.lock:
            exited = [p for p in self.procs.values() if p.poll() is not None]
        for proc in exited:
            if proc.returncode == 1 and "cannot connect to Postgres" in (
                    self.stderr[proc.pid].read_text(errors="replace")):
                with self.lock:
                    del self.procs[proc.pid]
                    del self.stderr[proc.pid]
                    self.start_failures += 1
                self.spawn()

    def stop(self) -> dict[int, int]:
        with self.lock:
            procs = list(self.procs.values())
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        return {proc.pid: proc.wait(timeout=60) for proc in procs}

    def restart_postgres(self) -> None:
        version = os.listdir("/etc/postgresql")[0]
        started = time.monotonic()
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main",
                        "restart"], check=True, capture_output=True, timeout=120)
        self.postgres_restart_s = time.monotonic() - started


def completed(db: str) -> int:
    def query() -> int:
        with closing(psycopg.connect(db, connect_timeout=3)) as conn:
            row = conn.execute("SELECT count(*) FROM runs WHERE status = 'completed'"
                               ).fetchone()
            return int(row[0]) if row else 0
    return retrying(query, "counting completed runs")


def waiting_for_approval(db: str) -> list[int]:
    """The n of every run whose approval wait is registered."""
    def query() -> list[int]:
        with closing(psycopg.connect(db, connect_timeout=3)) as conn:
            return [int(r[0].split("=", 1)[1]) for r in conn.execute(
                "SELECT match_key FROM waits WHERE event_name = %s", (ca.RESUME,))]
    return retrying(query, "listing waits")


async def produce(cluster: Cluster, acked: list[str]) -> None:
    """Send the go events, then keep resolving registered waits until all runs completed."""
    engine = stepwell.Engine(ca.build_app(None), db=cluster.db, worker=False)
    resumed: set[int] = set()

    async def send(event: dict[str, Any]) -> None:
        while True:
            try:
                acked.append(await engine.send(event))
                return
            except Exception:
                await asyncio.sleep(0.5)   # same id again: de-duplicated if it was stored

    async def senders() -> None:
        todo = list(range(RUNS))

        async def sender() -> None:
            while todo:
                n = todo.pop(0)
                await send({"id": f"evt-{n}", "name": ca.EVENT, "data": {"n": n}})
                await asyncio.sleep(cluster.rng.uniform(0.05, 0.4))

        await asyncio.gather(*(sender() for _ in range(12)))

    async def resolver() -> None:
        while completed(cluster.db) < RUNS:
            for n in await asyncio.to_thread(waiting_for_approval, cluster.db):
                if n not in resumed:
                    resumed.add(n)
                    await send({"id": f"resume-{n}", "name": ca.RESUME,
                                "data": {"n": n, "token": ca.token(n)}})
            await asyncio.sleep(0.2)

    async with engine:
        await asyncio.gather(senders(), resolver())


def chaos(cluster: Cluster, done: threading.Event) -> None:
    """Kill a random worker now and then, start a new one after a pause, restart Postgres once."""
    pending_restarts: list[float] = []
    next_kill = time.monotonic() + cluster.rng.uniform(*KILL_EVERY_S)
    restarted = False
    while not done.is_set():
        now = time.monotonic()
        if now >= next_kill:
            cluster.kill_one()
            pending_restarts.append(now + cluster.rng.uniform(*RESTART_AFTER_S))
            next_kill = now + cluster.rng.uniform(*KILL_EVERY_S)
        for due in [d for d in pending_restarts if d <= now]:
            pending_restarts.remove(due)
            cluster.spawn()
        cluster.supervise()
        if not restarted and completed(cluster.db) >= RUNS * RESTART_POSTGRES_AT:
            restarted = True
            cluster.restart_postgres()
        done.wait(0.05)
    for _ in pending_restarts:
        cluster.spawn()


def read_journal(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), "the journal ends with a torn line"
    return [json.loads(line) for line in raw.decode().splitlines() if line]


def test_chaos_kills_and_a_postgres_restart_lose_nothing(pg_database: str,
                                                          tmp_path: Path) -> None:
    cluster = Cluster(pg_database, tmp_path, random.Random(SEED))
    for _ in range(WORKERS):
        cluster.spawn()
    acked: list[str] = []
    done = threading.Event()
    chaos_thread = threading.Thread(target=chaos, args=(cluster, done), daemon=True)
    started = time.monotonic()
    chaos_thread.start()
    try:
        asyncio.run(asyncio.wait_for(produce(cluster, acked), DEADLINE_S))
    finally:
        done.set()
        chaos_thread.join(180)
        codes = cluster.stop()
    elapsed = time.monotonic() - started
    # 0, or SIGTERM'd before its handler was installed (a worker spawned just before the end).
    assert set(codes.values()) <= {0, -signal.SIGTERM}, codes
    logs = {pid: path.read_text(errors="replace") for pid, path in cluster.stderr.items()}
    errors = {pid: text for pid, text in logs.items() if " ERROR " in text or "Traceback" in text}
    assert not errors, f"workers logged errors: {errors}"

    with closing(psycopg.connect(pg_database)) as conn:
        events = {r[0]: (r[1], json.loads(r[2])) for r in conn.execute(
            "SELECT id, name, data FROM events WHERE name IN (%s, %s)", (ca.EVENT, ca.RESUME))}
        runs = conn.execute("SELECT id, status, event_id, output, error FROM runs").fetchall()
        memos = conn.execute("SELECT run_id, step_id, kind, outcome FROM memos").fetchall()
        queue = conn.execute("SELECT count(*) FROM queue").fetchone()

    # --- events: every acknowledged one is stored; each go event started one run ------------
    assert len(acked) == len(set(acked)) == 2 * RUNS, (len(acked), len(set(acked)))
    assert not set(acked) - set(events), f"acknowledged but not stored: {set(acked) - set(events)}"
    assert len(runs) == RUNS, Counter(r[2] for r in runs).most_common(3)
    assert sorted(r[2] for r in runs) == sorted(f"evt-{n}" for n in range(RUNS))

    # --- runs: all completed, right output -----------------------------------------------------
    run_n: dict[str, int] = {}
    for run_id, status, event_id, output, error in runs:
        assert status == "completed", (run_id, status, error)
        n = events[event_id][1]["n"]
        assert json.loads(output) == ca.expected_output(n), (run_id, n, output)
        run_n[run_id] = n
    assert queue == (0,), f"{queue} queue items left"

    # --- memos: one committed result per step, the right one -----------------------------------
    committed: dict[tuple[str, str], str] = {}
    per_run: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for run_id, step_id, kind, outcome in memos:
        per_run[run_id].append((step_id, kind))
        if kind == "run":
            data = json.loads(outcome)["data"]
            assert data["v"] == ca.expected_values(run_n[run_id])[step_id], (run_id, step_id)
            committed[(run_id, step_id)] = data["x"]
    for run_id, steps in per_run.items():
        assert sorted(steps) == sorted(ca.STEPS), (run_id, steps)
    assert len(per_run) == RUNS

    # --- the journal: re-executions only where a process died or lost its lease ----------------
    records = read_journal(cluster.journal)
    executions: dict[str, dict[str, Any]] = {}
    lease_lost: set[tuple[str, int]] = set()
    for rec in records:
        if rec["e"] == "start":
            executions[rec["x"]] = dict(rec, ended=False)
        elif rec["e"] == "end":
            executions[rec["x"]]["ended"] = True
        elif rec["e"] == "lease_lost":
            lease_lost.add((rec["run"], rec["pid"]))
    killed = set(cluster.killed)
    by_step: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for ex in executions.values():
        by_step[(ex["run"], ex["step"])].append(ex)
    assert set(by_step) == set(committed)
    violations = []
    reexecuted = Counter[str]()
    for key, execs in by_step.items():
        winner = executions.get(committed[key])
        if winner is None or not winner["ended"]:
            violations.append(f"{key}: the committed result's execution never ended")
            continue
        for ex in execs:
            if ex is winner:
                continue
            if ex["pid"] in killed:
                reexecuted["killed"] += 1
            elif (ex["run"], ex["pid"]) in lease_lost:
                reexecuted["lease lost"] += 1
            else:
                violations.append(f"{key}: re-executed in pid {ex['pid']}, which was neither "
                                  "killed nor told it lost the run's lease")
    report = (f"seed {SEED}: {RUNS} runs by {WORKERS} workers in {elapsed:.0f}s; "
              f"{len(cluster.killed)} SIGKILLs; Postgres restarted once "
              f"({cluster.postgres_restart_s or 0:.1f}s; {cluster.start_failures} workers "
              f"started during it exited and were started again); {len(executions)} step-body "
              f"executions for {len(committed)} steps; {sum(reexecuted.values())} re-executed "
              f"({reexecuted['killed']} in killed workers, {reexecuted['lease lost']} after a "
              f"lease was taken over)")
    print("\n" + report)
    assert not violations, "\n".join(violations[:20]) + "\n" + report
    assert cluster.postgres_restart_s is not None, "Postgres was never restarted"
    assert len(cluster.killed) >= 20, report
