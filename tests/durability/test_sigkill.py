"""Durability under SIGKILL: a real worker process killed at random moments, restarted each time.

`worker_app.py` sends 200 events (each starting a run of four step bodies and a real 50 ms sleep)
and exits once every run has completed. This test SIGKILLs it many times at random moments (a
seeded schedule, `STEPWELL_SIGKILL_SEED` to replay one), starts it again after each kill, lets the
last incarnation finish, and then checks the guarantees of DESIGN.md against the database (read
directly with sqlite3) and the journal of step executions the worker keeps:

- every acknowledged event is stored, and each started exactly one run;
- every run completed with the output its event determines;
- every step has exactly one committed result, and it is the right one;
- a step body ran more than once only if the process running it was killed before its result was
  committed: every execution other than the committed one happened in a killed process, at most
  once per process, before the committed one, and was that run's last step in that process (so it
  was in flight at the kill).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("worker_app.py")
SEED = int(os.environ.get("STEPWELL_SIGKILL_SEED", "4242"))
SEND_COUNT = 200
TARGET_KILLS = 30            # kills of a started engine (after its "ready" line)
MIN_KILLS = 15
EARLY_KILL_RATE = 0.15       # some incarnations are killed during start-up instead
KILL_DELAY_S = (0.02, 0.3)   # after "ready"
EARLY_DELAY_S = (0.0, 0.6)   # after spawn (interpreter start, imports, migrations, reclaim)
DEADLINE_S = 120.0


def _load_worker_module() -> Any:
    spec = importlib.util.spec_from_file_location("durability_worker_app", WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wa = _load_worker_module()


@dataclass
class Execution:
    exec_id: str
    run_id: str
    step: str
    pid: int
    start: int                 # position of the start line in the journal
    end: int | None = None     # position of the end line, if the body returned


@dataclass
class Chaos:
    tmp: Path
    rng: random.Random
    started: float = field(default_factory=time.monotonic)
    killed: list[int] = field(default_factory=list)          # pids killed after "ready"
    killed_early: list[int] = field(default_factory=list)    # pids killed during start-up
    pids: list[int] = field(default_factory=list)
    stderr_files: list[Path] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.tmp / "stepwell.db"

    @property
    def journal(self) -> Path:
        return self.tmp / "journal.jsonl"

    @property
    def acks(self) -> Path:
        return self.tmp / "acks.jsonl"

    def remaining(self) -> float:
        return DEADLINE_S - (time.monotonic() - self.started)

    def spawn(self) -> subprocess.Popen[bytes]:
        err = self.tmp / f"worker-{len(self.pids)}.stderr"
        self.stderr_files.append(err)
        with err.open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), str(self.db), str(self.journal), str(self.acks),
                 str(SEND_COUNT)], stdout=sink, stderr=sink)
        self.pids.append(proc.pid)
        return proc

    def stderr_text(self, index: int = -1) -> str:
        return self.stderr_files[index].read_text(errors="replace")

    def wait_ready(self, proc: subprocess.Popen[bytes]) -> bool:
        """Poll the journal for this process's "ready" line; False if it exited first."""
        needle = f'"e":"ready","pid":{proc.pid}}}'.encode()
        while True:
            if self.journal.exists() and needle in self.journal.read_bytes():
                return True
            if proc.poll() is not None:
                return False
            if self.remaining() <= 0:
                proc.kill()
                proc.wait()
                raise AssertionError(
                    f"seed {SEED}: worker {proc.pid} did not start within the deadline\n"
                    f"{self.summary()}\nstderr:\n{self.stderr_text()}")
            time.sleep(0.005)

    def summary(self) -> str:
        return (f"kills after ready: {len(self.killed)}, during start-up: "
                f"{len(self.killed_early)}, incarnations: {len(self.pids)}, "
                f"elapsed {time.monotonic() - self.started:.1f}s\n{db_summary(self.db)}")


def db_summary(db: Path) -> str:
    if not db.exists():
        return "(no database)"
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        statuses = conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        memos = conn.execute("SELECT count(*) FROM memos").fetchone()[0]
        queue = conn.execute("SELECT id, kind, run_id, due_at, owner, lease_until, rerun "
                             "FROM queue ORDER BY due_at LIMIT 10").fetchall()
        qcount = conn.execute("SELECT count(*) FROM queue").fetchone()[0]
    return (f"db: events={events} runs={dict(statuses)} memos={memos} queue={qcount} "
            f"(first items: {queue})")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    raw = path.read_bytes()
    assert not raw or raw.endswith(b"\n"), f"{path.name} ends with a torn line"
    return [json.loads(line) for line in raw.decode().splitlines() if line]


def run_chaos(chaos: Chaos) -> None:
    """Kill the worker TARGET_KILLS times at random moments, then let it finish."""
    finished = False
    while len(chaos.killed) < TARGET_KILLS and not finished:
        assert chaos.remaining() > 0, f"seed {SEED}: deadline exceeded\n{chaos.summary()}"
        proc = chaos.spawn()
        early = chaos.rng.random() < EARLY_KILL_RATE
        if early:
            delay = chaos.rng.uniform(*EARLY_DELAY_S)
        else:
            chaos.wait_ready(proc)
            delay = chaos.rng.uniform(*KILL_DELAY_S)
        try:
            proc.wait(timeout=delay)      # the random kill moment (not a wait on the engine)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if proc.returncode == -signal.SIGKILL:
            (chaos.killed_early if early else chaos.killed).append(proc.pid)
        elif proc.returncode == 0:
            finished = True
        else:
            raise AssertionError(
                f"seed {SEED}: worker {proc.pid} exited with {proc.returncode}\n"
                f"{chaos.summary()}\nstderr:\n{chaos.stderr_text()}")
    if not finished:
        proc = chaos.spawn()
        try:
            proc.wait(timeout=max(chaos.remaining(), 1.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"seed {SEED}: the last worker (pid {proc.pid}) did not finish all runs within "
                f"the {DEADLINE_S:.0f}s deadline\n{chaos.summary()}\n"
                f"stderr:\n{chaos.stderr_text()}") from None
        assert proc.returncode == 0, (
            f"seed {SEED}: the last worker exited with {proc.returncode}\n{chaos.summary()}\n"
            f"stderr:\n{chaos.stderr_text()}")


def test_sigkill_many_times_loses_nothing_and_commits_each_step_once(tmp_path: Path) -> None:
    chaos = Chaos(tmp_path, random.Random(SEED))
    run_chaos(chaos)
    elapsed = time.monotonic() - chaos.started
    context = f"seed {SEED}: {chaos.summary()}"
    kills = len(chaos.killed) + len(chaos.killed_early)
    killed = set(chaos.killed) | set(chaos.killed_early)
    assert len(chaos.killed) >= MIN_KILLS, (
        f"the worker finished after only {len(chaos.killed)} kills; slow its load down\n"
        f"{context}")

    # Nothing the engine logged at ERROR (e.g. "run session crashed") in any incarnation.
    logged = {i: chaos.stderr_text(i) for i in range(len(chaos.stderr_files))}
    errors = {chaos.pids[i]: text for i, text in logged.items()
              if "ERROR" in text or "Traceback" in text}
    assert not errors, f"workers logged errors: {errors}\n{context}"

    # --- events: every acknowledged event is stored, once ----------------------------------
    acked = [a["id"] for a in read_jsonl(chaos.acks)]
    expected_ids = {wa.event_id(n) for n in range(SEND_COUNT)}
    assert len(acked) == len(set(acked)), f"an event was acknowledged twice\n{context}"
    assert set(acked) == expected_ids, context
    with closing(sqlite3.connect(f"file:{chaos.db}?mode=ro", uri=True)) as conn:
        events = {eid: (name, json.loads(data)) for eid, name, data in
                  conn.execute("SELECT id, name, data FROM events")}
        runs = conn.execute(
            "SELECT id, function_id, status, event_id, output, error FROM runs").fetchall()
        memos = conn.execute("SELECT run_id, hash, step_id, kind, outcome FROM memos").fetchall()
        failures = conn.execute("SELECT run_id, step_id, attempt, error FROM step_failures"
                                ).fetchall()
        queue = conn.execute("SELECT id, kind, run_id, owner FROM queue").fetchall()
    lost = sorted(set(acked) - set(events))
    assert not lost, f"acknowledged events missing from the events table: {lost}\n{context}"
    assert set(events) == expected_ids, f"unexpected events: {set(events) - expected_ids}"
    for n in range(SEND_COUNT):
        assert events[wa.event_id(n)] == (wa.EVENT, {"n": n}), (n, events[wa.event_id(n)])

    # --- runs: one per event, all completed with the right output ----------------------------
    assert len(runs) == SEND_COUNT, (
        f"{len(runs)} runs for {SEND_COUNT} events; per event: "
        f"{Counter(r[3] for r in runs).most_common(3)}\n{context}")
    run_event: dict[str, int] = {}
    for run_id, function_id, status, event_id, output, error in runs:
        assert function_id == wa.FUNCTION_ID, (run_id, function_id)
        assert status == "completed", f"run {run_id} is {status}: {error}\n{context}"
        n = events[event_id][1]["n"]
        assert json.loads(output) == wa.expected_output(n), (run_id, n, output)
        run_event[run_id] = n
    assert sorted(run_event.values()) == list(range(SEND_COUNT)), "a run per event, exactly"
    assert not failures, f"unexpected step failures: {failures[:5]}\n{context}"
    assert not queue, f"queue items left after every run completed: {queue[:5]}\n{context}"

    # --- memos: exactly one committed result per step, the right one --------------------------
    committed: dict[tuple[str, str], str] = {}      # (run, step) -> exec id of the memo
    per_run: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for run_id, _hash, step_id, kind, outcome in memos:
        per_run[run_id].append((step_id, kind))
        if kind == "run":
            data = json.loads(outcome)["data"]
            expected = wa.expected_step_values(run_event[run_id])[step_id]
            assert data["v"] == expected, (run_id, step_id, data, expected)
            committed[(run_id, step_id)] = data["x"]
    assert set(per_run) == set(run_event), "memos for unknown runs, or runs without memos"
    for run_id, steps in per_run.items():
        assert sorted(steps) == sorted(wa.STEPS), (
            f"run {run_id} has memos {sorted(steps)}, expected each of {wa.STEPS} once")

    # --- the journal: re-executions only for steps in flight at a kill ------------------------
    records = read_jsonl(chaos.journal)
    executions: dict[str, Execution] = {}
    for index, rec in enumerate(records):
        if rec["e"] == "start":
            assert rec["x"] not in executions
            executions[rec["x"]] = Execution(rec["x"], rec["run"], rec["step"], rec["pid"],
                                             index)
        elif rec["e"] == "end":
            ex = executions[rec["x"]]
            assert (ex.run_id, ex.step, ex.pid, ex.end) == (rec["run"], rec["step"],
                                                            rec["pid"], None), rec
            ex.end = index
    by_step: dict[tuple[str, str], list[Execution]] = defaultdict(list)
    for ex in executions.values():
        assert ex.run_id in run_event, f"a step body ran for an unknown run: {ex}"
        by_step[(ex.run_id, ex.step)].append(ex)
    assert set(by_step) == set(committed), "a step without executions, or one without a memo"

    step_order = {step_id: i for i, (step_id, _kind) in enumerate(wa.STEPS)}
    furthest: dict[tuple[str, int], int] = {}      # (run, pid) -> last step it started there
    for ex in executions.values():
        key = (ex.run_id, ex.pid)
        furthest[key] = max(furthest.get(key, -1), step_order[ex.step])

    violations: list[str] = []
    abandoned_per_pid: Counter[int] = Counter()
    abandoned_after_return = 0
    for (run_id, step_id), execs in by_step.items():
        winner = executions.get(committed[(run_id, step_id)])
        if winner is None or winner.end is None:
            violations.append(f"{run_id}/{step_id}: the committed result's execution "
                              f"{committed[(run_id, step_id)]} never ran to its end")
            continue
        pids = Counter(ex.pid for ex in execs)
        if max(pids.values()) > 1:
            violations.append(f"{run_id}/{step_id}: ran more than once in one process: {pids}")
        if len(execs) > kills + 1:
            violations.append(f"{run_id}/{step_id}: ran {len(execs)} times for {kills} kills")
        for ex in execs:
            if ex is winner:
                continue
            abandoned_per_pid[ex.pid] += 1
            abandoned_after_return += ex.end is not None
            where = f"{run_id}/{step_id} execution {ex.exec_id} in pid {ex.pid}"
            if ex.pid not in killed:
                violations.append(f"{where}: re-executed but that process was never killed")
            if ex.start > winner.start:
                violations.append(f"{where}: ran after the committed execution "
                                  f"{winner.exec_id} (pid {winner.pid}) had started")
            if furthest[(run_id, ex.pid)] != step_order[step_id]:
                violations.append(f"{where}: not committed, yet the run went on to later steps "
                                  "in the same process")
    reexecutions = sum(abandoned_per_pid.values())
    report = (f"seed {SEED}: {kills} kills ({len(chaos.killed)} after ready, "
              f"{len(chaos.killed_early)} during start-up) over {len(chaos.pids)} incarnations "
              f"in {elapsed:.1f}s; {len(executions)} step-body executions for {len(committed)} "
              f"steps; {reexecutions} re-executed step bodies ({abandoned_after_return} had "
              f"returned but were not yet committed), from {len(abandoned_per_pid)} of the "
              f"kills, at most {max(abandoned_per_pid.values(), default=0)} in one kill")
    print("\n" + report)
    assert not violations, f"{len(violations)} violations:\n" + "\n".join(violations[:20]) + (
        f"\n{report}\n{context}")
    assert reexecutions > 0, f"no kill ever landed on a step in flight: {report}"
