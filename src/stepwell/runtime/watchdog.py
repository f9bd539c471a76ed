"""Notice user code that blocks the engine's event loop, and say which code and how to fix it.

An `async def` handler or step that calls something blocking (`time.sleep`, `requests.get`, a
CPU-heavy loop) freezes every run, the HTTP API and the dashboard of its process for as long as
it blocks. Nothing fails, so nothing says so: this module makes it visible.

How: the loop stamps a heartbeat a few times per `threshold`; a daemon thread checks it. When
the heartbeat is older than the threshold, the thread reads the loop thread's current stack
(`sys._current_frames`) and looks for the innermost frame of *user* code (not stepwell, asyncio
or the standard library). It logs one warning per user function (at the line it was caught
on), naming the stepwell function that owns it and the fix. A stall with no user frame on the
stack (a slow machine, a long GC) is not reported: it is not something the user can fix in
their handler. Costs one thread waking a few times per threshold and one loop callback per
tick; nothing when disabled.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import CodeType, FrameType

from stepwell.runtime.usercode import is_user_code

log = logging.getLogger("stepwell.engine")


class LoopWatchdog:
    """Reports user code that holds the event loop for longer than `threshold_s`.

    `owners` maps a handler's code object to its function's id, so the warning can say which
    function blocked (it is read when a stall is found, so functions loaded later count)."""

    def __init__(self, threshold_s: float, owners: Callable[[], Mapping[CodeType, str]]) -> None:
        self.threshold_s = threshold_s
        self._owners = owners
        self._beat = time.monotonic()
        self._stop = threading.Event()
        # Functions already reported (file, first line): a loop that blocks is sampled at
        # whichever of its lines is running, and should be reported once, not once per line.
        self._reported: set[tuple[str, int]] = set()
        self._loop_thread = 0
        self._handle: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop_thread = threading.get_ident()
        self._stop.clear()
        self._tick(loop)
        self._thread = threading.Thread(target=self._watch, name="stepwell-watchdog",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._beat = time.monotonic()
        if not self._stop.is_set():
            self._handle = loop.call_later(self.threshold_s / 4, self._tick, loop)

    def _watch(self) -> None:
        while not self._stop.wait(self.threshold_s / 4):
            stalled = time.monotonic() - self._beat
            if stalled > self.threshold_s:
                self._inspect(stalled)

    def _inspect(self, stalled: float) -> None:
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return
        stack: list[FrameType] = []
        while frame is not None:
            stack.append(frame)
            frame = frame.f_back
        user = next((f for f in stack if is_user_code(f.f_code.co_filename)), None)
        if user is None:
            return
        where = (user.f_code.co_filename, user.f_lineno)
        function_key = (user.f_code.co_filename, user.f_code.co_firstlineno)
        if function_key in self._reported:
            return
        self._reported.add(function_key)
        owners = self._owners()
        function = next((owners[f.f_code] for f in stack if f.f_code in owners), None)
        who = f"function {function!r}" if function else "user code"
        log.warning(
            "the event loop has been blocked for %.1f s by %s, at %s:%d in %s(): every run, "
            "the HTTP API and the dashboard of this process wait meanwhile. Make the handler "
            "(or the step function) a plain `def` (stepwell runs those on worker threads), or "
            "use an async call (`await asyncio.sleep(...)`, an async HTTP client). Reported "
            "once per function.", stalled, who, where[0], where[1], user.f_code.co_name)
