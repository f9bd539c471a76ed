"""`BlockingEngine`: an `Engine` for sync code (Flask and Django views, scripts, any thread).

The engine runs on stepwell's private loop thread (`stepwell.loop_thread`); each method here
hands the engine's own coroutine to that loop and blocks until it is done, so there is one
implementation of every call and the object is safe to share between threads (a threaded WSGI
server's). With `worker=False` it only sends events and reads runs, and a separate
`stepwell worker` (or `manage.py stepwell worker`) runs them: see docs/guides/topology.md.
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import Any

from stepwell.core.models import Run
from stepwell.loop_thread import block_on
from stepwell.runtime.engine import Engine

log = logging.getLogger("stepwell.engine")


class BlockingEngine:
    """A started-on-first-use `Engine` with blocking methods (the async ones' names)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._started = False

    def start(self) -> BlockingEngine:
        """Start the engine on the loop thread (idempotent; the first call also arranges for
        it to stop cleanly when the interpreter exits)."""
        with self._lock:
            if not self._started:
                block_on(self.engine.start())
                self._started = True
                atexit.register(self._stop_at_exit)
        return self

    def stop(self) -> None:
        with self._lock:
            if self._started:
                self._started = False
                block_on(self.engine.stop())

    def _stop_at_exit(self) -> None:
        """Stop at interpreter exit if the code did not. By then the interpreter may refuse new
        threads (Python shuts its executors down first): then the engine is left as a crashed
        process would leave it, which is safe: its leases are taken over by the next process
        on this host at once, or by any worker when they expire."""
        try:
            self.stop()
        except RuntimeError as exc:
            log.info("stepwell engine not stopped cleanly at exit: %s", exc)

    def send(self, *args: Any) -> str | list[str]:
        """As `Engine.send`; the events are durable when this returns."""
        self.start()
        return block_on(self.engine.send(*args))

    def runs(self, event_id: str | None = None, function_id: str | None = None,
             status: str | None = None, limit: int = 1000) -> list[Run]:
        self.start()
        return block_on(self.engine.runs(event_id, function_id, status, limit))

    def get_run(self, run_id: str) -> Run | None:
        self.start()
        return block_on(self.engine.get_run(run_id))

    def wait(self, run_id: str, timeout: float = 30.0) -> Run:
        self.start()
        return block_on(self.engine.wait(run_id, timeout))

    def cancel(self, run_id: str) -> bool:
        self.start()
        return block_on(self.engine.cancel(run_id))
