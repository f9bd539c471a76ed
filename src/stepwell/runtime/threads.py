"""The thread pool that runs plain `def` step bodies, made for many short calls.

`loop.run_in_executor(ThreadPoolExecutor)` costs, per call, a `concurrent.futures.Future` (with
its own lock and condition), an asyncio future chained to it, and one `call_soon_threadsafe`
(a write to the loop's wake-up pipe) when it is done. A step body is usually short, and a busy
engine runs thousands a second: that made a run of 3 plain `def` steps cost ~28% more CPU than
the same run with `async def` bodies (bench/core.py, CPU ms per run). Here a call is one asyncio
future and one queue entry; results come back in batches, so one wake-up of the loop delivers
every result that finished meanwhile.

Threads are started when a call finds none idle, up to `max_threads`, and are daemons: a step
body still running when the interpreter exits is cut off as by a crash (its step has no
checkpoint yet and runs again on recovery), rather than holding the process open.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

_STOP = object()


class StepThreads(Executor):
    """Run sync callables on worker threads and deliver their results to the event loop.

    `run` is the fast path (awaited from the loop); `submit` keeps it a plain `Executor` for
    anything else. `shutdown` cancels the calls that have not started."""

    def __init__(self, max_threads: int, name: str) -> None:
        self.max_threads = max(1, max_threads)
        self.name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._spawn_lock = threading.Lock()
        self._closed = False
        # Finished calls waiting for the loop: (future, error, value); one wake-up per batch.
        self._done: collections.deque[tuple[asyncio.Future[Any], BaseException | None, Any]] = (
            collections.deque())
        self._wake_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """`fn(*args, **kwargs)` on a worker thread, in a copy of the caller's context."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
        if self._closed:
            raise RuntimeError(f"{self.name}: the thread pool is shut down")
        future: asyncio.Future[T] = loop.create_future()
        context = contextvars.copy_context()
        self._jobs.put((future, context, fn, args, kwargs))
        self._ensure_thread()
        return future

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        result: Future[T] = Future()

        def call() -> None:
            if not result.set_running_or_notify_cancel():
                return
            try:
                result.set_result(fn(*args, **kwargs))
            except BaseException as exc:     # handed to the caller
                result.set_exception(exc)

        if self._closed:
            raise RuntimeError(f"{self.name}: the thread pool is shut down")
        self._jobs.put((None, None, call, (), {}))
        self._ensure_thread()
        return result

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
        if cancel_futures:
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                future = job[0]
                if future is not None and self._loop is not None and not self._loop.is_closed():
                    self._loop.call_soon_threadsafe(future.cancel)
        for _ in self._threads:
            self._jobs.put(_STOP)
        if wait:
            for thread in self._threads:
                thread.join()

    def _ensure_thread(self) -> None:
        if self._idle.acquire(blocking=False):
            return
        with self._spawn_lock:
            if len(self._threads) >= self.max_threads:
                return
            thread = threading.Thread(target=self._work, daemon=True,
                                      name=f"{self.name}_{len(self._threads)}")
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is _STOP:
                return
            future, context, fn, args, kwargs = job
            if future is None:                      # submit(): it reports by itself
                fn()
            elif not future.cancelled():
                try:
                    value = context.run(fn, *args, **kwargs)
                except BaseException as exc:     # handed to the awaiting step
                    self._finish(future, exc, None)
                else:
                    self._finish(future, None, value)
            self._idle.release()

    def _finish(self, future: asyncio.Future[Any], error: BaseException | None,
                value: Any) -> None:
        self._done.append((future, error, value))
        if not self._wake_pending:
            self._wake_pending = True
            # A closed loop (RuntimeError) has nobody awaiting the result.
            with contextlib.suppress(RuntimeError):
                future.get_loop().call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        # Reset first, then drain: a result appended after the reset schedules a new call.
        self._wake_pending = False
        done = self._done
        while done:
            future, error, value = done.popleft()
            if future.cancelled():
                continue
            if isinstance(error, StopIteration):    # a future refuses it (PEP 479)
                wrapped = RuntimeError(f"the step raised {type(error).__name__}")
                wrapped.__cause__ = error
                error = wrapped
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)
