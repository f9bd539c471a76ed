"""User code that blocks the engine's event loop is reported, once per function, with the fix."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import stepwell

DEADLINE_S = 30.0


class Reports(logging.Handler):
    """Collects the watchdog's warnings; `seen` is set when the first one arrives."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "event loop has been blocked" in message:
            self.messages.append(message)
            self.seen.set()


def block_until(flag: threading.Event, at_least_s: float = 0.0) -> None:
    """Blocks the calling thread (the loop, from an async handler) until the report is made,
    and for at least `at_least_s`."""
    start = time.monotonic()
    while time.monotonic() - start < DEADLINE_S and (
            not flag.is_set() or time.monotonic() - start < at_least_s):
        time.sleep(0.01)


async def test_a_blocking_async_handler_is_reported_once_with_its_name(make_engine: Any
                                                                       ) -> None:
    reports = Reports()
    logging.getLogger("stepwell.engine").addHandler(reports)
    app = stepwell.App("blocky")

    @app.function(id="hog", trigger="blocky/hog")
    async def hog(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.run("first", lambda: 1)
        # e.g. time.sleep(5) in an async handler; again (3 thresholds long) on the 2nd run.
        block_until(reports.seen, 0.3 if ctx.event.data.get("again") else 0.0)
        return "done"

    @app.function(id="polite", trigger="blocky/polite")
    def polite(ctx: stepwell.Context, step: stepwell.SyncStep) -> str:
        time.sleep(0.3)                      # a plain def handler runs on a worker thread
        return step.run("only", lambda: "ok")

    try:
        async with make_engine(app, block_warning_seconds=0.1) as engine:
            first = await engine.send("blocky/hog", {})
            [run] = await engine.runs(event_id=first)
            assert (await engine.wait(run.id, timeout=DEADLINE_S)).status == "completed"
            assert len(reports.messages) == 1
            message = reports.messages[0]
            assert "function 'blocky/hog'" in message
            assert "test_blocking.py" in message and "block_until()" in message
            assert "plain `def`" in message and "await asyncio.sleep" in message
            # The same place blocking again is not reported again.
            second = await engine.send("blocky/hog", {"again": True})
            [run] = await engine.runs(event_id=second)
            assert (await engine.wait(run.id, timeout=DEADLINE_S)).status == "completed"
            # A plain def handler that sleeps blocks only its own thread.
            third = await engine.send("blocky/polite", {})
            [run] = await engine.runs(event_id=third)
            assert (await engine.wait(run.id, timeout=DEADLINE_S)).status == "completed"
            assert len(reports.messages) == 1
    finally:
        logging.getLogger("stepwell.engine").removeHandler(reports)


async def test_the_watchdog_can_be_turned_off(make_engine: Any) -> None:
    app = stepwell.App("quiet")

    @app.function(id="noop", trigger="quiet/noop")
    async def noop(ctx: stepwell.Context, step: stepwell.Step) -> None:
        return None

    async with make_engine(app, block_warning_seconds=None) as engine:
        assert engine._worker._watchdog is None
        assert not any(t.name == "stepwell-watchdog" for t in threading.enumerate())
