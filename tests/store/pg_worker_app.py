"""Apps and a worker process for the multi-process Postgres tests; not a test module.

    python pg_worker_app.py cron DB_URL JOURNAL CLOCK_FILE

runs an engine whose clock is the virtual instant written in CLOCK_FILE (epoch ms), shared by
every process started with the same file: the test moves time forward by rewriting it, one
cron tick at a time, only once the previous tick's run is done, so the test does not depend on
how fast the machine is. It runs until SIGTERM.

`work_app` is the app the `stepwell worker` CLI test loads (`pg_worker_app.py:work_app`).
Journals are append-only JSON lines written with one `os.write` each.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import stepwell

POLL_S = 0.01


def journal(path: str, **record: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def set_clock(path: Path, instant_ms: int) -> None:
    """Move the shared virtual clock (atomically: readers see the old or the new instant)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(instant_ms))
    os.replace(tmp, path)


class SharedFileClock:
    """The virtual instant in a file, the same in every process that reads it."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def now(self) -> int:
        return int(self.path.read_text())

    async def sleep_until(self, when_ms: int) -> None:
        """Until the test moves the clock there (a file has no change notification: poll)."""
        while True:
            if self.now() >= when_ms:
                return
            await asyncio.sleep(POLL_S)


def cron_app(journal_path: str) -> stepwell.App:
    app = stepwell.App("pgcron")

    @app.function(id="tick", trigger=stepwell.Cron("* * * * *"))
    async def tick(ctx: stepwell.Context, step: stepwell.Step) -> int:
        async def record() -> int:
            journal(journal_path, event=ctx.event.id, ts=ctx.event.ts, pid=os.getpid())
            return ctx.event.ts
        return await step.run("record", record)

    return app


# The app of the CLI test: each run's step says which process ran it.
work_app = stepwell.App("pgwork")


@work_app.function(id="job", trigger="pgwork/job")
async def job(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
    async def work() -> int:
        await asyncio.sleep(0.05)
        return os.getpid()

    pid = await step.run("work", work)
    return {"n": ctx.event.data["n"], "pid": pid}


async def run_cron(db: str, journal_path: str, clock_path: str) -> None:
    engine = stepwell.Engine(cron_app(journal_path), db=db, clock=SharedFileClock(clock_path),
                             poll_seconds=0.2)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with engine:
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    mode, db_url, journal_file, clock_file = sys.argv[1:5]
    assert mode == "cron"
    asyncio.run(run_cron(db_url, journal_file, clock_file))
