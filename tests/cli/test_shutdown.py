"""SIGTERM stops the server (issue 10.1): under the load of a function triggered by every
event, with a step body that never returns, and on a second signal at once.

The original report: a function on `"*"` fed itself its own finished events (each doubling),
and the process ignored SIGTERM. It did not ignore the signal: its clean stop waited for the
writer to commit hundreds of megabytes queued ahead of it, and at exit the interpreter waits
for every worker thread. Events are now bounded, and a stop that takes longer than its grace
period (or a second signal) ends the process at once, which loses nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

DEADLINE_S = 60.0

APP = '''
import os, threading
import stepwell

app = stepwell.App("stop")

@app.function(id="every", trigger="*")
async def every(ctx, step):
    return {"echo": ctx.event.to_dict()}

@app.function(id="stuck", trigger="stop/stuck")
def stuck(ctx, step):
    def forever():
        open(os.environ["STARTED_FILE"], "w").close()
        threading.Event().wait()
    step.run("forever", forever)

@app.function(id="stuck-handler", trigger="stop/stuck-handler")
def stuck_handler(ctx, step):
    open(os.environ["STARTED_FILE"], "w").close()
    threading.Event().wait()        # the handler itself blocks, outside any step
'''


def start_server(tmp_path: Path, grace_s: float) -> tuple[subprocess.Popen[str], str]:
    (tmp_path / "stop_app.py").write_text(APP)
    env = dict(os.environ, STARTED_FILE=str(tmp_path / "started"),
               STEPWELL_SHUTDOWN_GRACE_S=str(grace_s))
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepwell", "start", "stop_app.py:app", "--db",
         f"sqlite:///{tmp_path / 'db.sqlite'}", "--port", "0"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    banner = ""
    while "running at " not in banner:
        line = proc.stdout.readline()
        assert line, f"stepwell start exited: {banner}"
        banner += line
    return proc, banner.split("running at ")[1].split()[0]


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_sigterm_stops_the_server_under_a_star_function_s_load(tmp_path: Path) -> None:
    proc, url = start_server(tmp_path, grace_s=600)
    try:
        for n in range(20):
            reply = httpx.post(f"{url}/e/dev", json={"name": "load/ev",
                                                    "data": {"n": n, "pad": "p" * 20_000}})
            assert reply.status_code == 200, reply.text

        def settled() -> bool:
            runs = httpx.get(f"{url}/v1/runs", params={"limit": 100}).json()["data"]
            return len(runs) >= 20 and all(r["status"] == "Completed" for r in runs)

        wait_for(settled, "the 20 runs")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    db_bytes = sum(p.stat().st_size for p in tmp_path.glob("db.sqlite*"))
    assert db_bytes < 20 * 1024 * 1024, f"the database grew to {db_bytes} bytes"


def test_a_step_that_never_returns_does_not_hold_the_process_past_its_grace(
        tmp_path: Path) -> None:
    proc, url = start_server(tmp_path, grace_s=1)
    try:
        assert httpx.post(f"{url}/e/dev", json={"name": "stop/stuck"}).status_code == 200
        wait_for(lambda: (tmp_path / "started").exists(), "the stuck step to start")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # Step bodies run on daemon threads (runtime/threads.py): the stuck one cannot hold the
    # interpreter, so the stop is clean; the run's lease is handed back and the step runs again
    # on the next start, as after a crash.
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    (tmp_path / "started").unlink()
    again, _ = start_server(tmp_path, grace_s=1)
    try:
        wait_for(lambda: (tmp_path / "started").exists(), "the stuck step to run again")
    finally:
        again.kill()
        again.communicate()


def test_a_handler_that_never_returns_is_cut_off_after_the_grace(tmp_path: Path) -> None:
    proc, url = start_server(tmp_path, grace_s=1)
    try:
        reply = httpx.post(f"{url}/e/dev", json={"name": "stop/stuck-handler"})
        assert reply.status_code == 200
        wait_for(lambda: (tmp_path / "started").exists(), "the stuck handler to start")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    assert "stopping now (the clean stop taking over 1 s)" in err, err


def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    proc, url = start_server(tmp_path, grace_s=600)
    try:
        assert httpx.post(f"{url}/e/dev", json={"name": "stop/stuck"}).status_code == 200
        wait_for(lambda: (tmp_path / "started").exists(), "the stuck step to start")
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    assert "stopping now (a second signal)" in err, err
