"""Apps and a worker process for the multi-process Postgres tests; not a test module.

    python pg_worker_app.py cron DB_URL JOURNAL ORIGIN_WALL_MS ORIGIN_VIRTUAL_MS SPEED

runs an engine whose clock is shared by every process started with the same origin and speed
(virtual time = origin_virtual + (wall - origin_wall) * speed), so a once-a-minute cron fires
every second of real time in all of them alike. It runs until SIGTERM.

`work_app` is the app the `stepwell worker` CLI test loads (`pg_worker_app.py:work_app`).
Journals are append-only JSON lines written with one `os.write` each.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

import stepwell


def journal(path: str, **record: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


class SharedFastClock:
    """Wall time sped up, identically in every process given the same origin."""

    def __init__(self, origin_wall_ms: int, origin_virtual_ms: int, speed: float) -> None:
        self.w0 = origin_wall_ms
        self.v0 = origin_virtual_ms
        self.speed = speed

    def now(self) -> int:
        return self.v0 + int((time.time() * 1000 - self.w0) * self.speed)

    async def sleep_until(self, when_ms: int) -> None:
        delay = (when_ms - self.now()) / self.speed / 1000
        if delay > 0:
            await asyncio.sleep(delay)


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


async def run_cron(db: str, journal_path: str, w0: int, v0: int, speed: float) -> None:
    engine = stepwell.Engine(cron_app(journal_path), db=db,
                             clock=SharedFastClock(w0, v0, speed), poll_seconds=0.2)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with engine:
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    mode, db_url, journal_file, wall0, virtual0, speed_text = sys.argv[1:7]
    assert mode == "cron"
    asyncio.run(run_cron(db_url, journal_file, int(wall0), int(virtual0), float(speed_text)))
