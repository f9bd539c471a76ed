"""One private asyncio loop on a daemon thread: how sync code (Flask and Django views, scripts)
uses the async implementations without a second, blocking implementation of each call.

Every sync facade in the process shares the loop (one thread, started on first use), so a
blocking call costs a hand-off to that thread, never a new loop per call. It is thread-safe:
any number of threads may block on calls at once; the loop interleaves them.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def shared_loop() -> asyncio.AbstractEventLoop:
    """The process's private loop, started on first use (again after a fork: a child process
    does not inherit the parent's thread)."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            _loop = _start()
        return _loop


def _start() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()

    threading.Thread(target=run, name="stepwell-loop", daemon=True).start()
    ready.wait()
    return loop


def _after_fork() -> None:
    global _loop
    _loop = None


if hasattr(os, "register_at_fork"):      # gunicorn forks its workers after importing the app
    os.register_at_fork(after_in_child=_after_fork)


def block_on(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop | None = None) -> T:
    """Run `coro` on the private loop (or `loop`) and wait for its result in this thread."""
    target = loop or shared_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is target:
        coro.close()
        raise RuntimeError("a blocking stepwell call was made on stepwell's own loop thread; "
                           "use the async API there")
    return asyncio.run_coroutine_threadsafe(coro, target).result()
