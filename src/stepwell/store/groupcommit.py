"""Group commit, shared by the backends: many transaction scripts, one transaction.

A durable commit costs a disk flush (SQLite `synchronous=FULL`, Postgres `synchronous_commit=on`),
so committing each run's checkpoint on its own caps throughput at a few hundred per second.
Instead, writer threads drain every script submitted since their last commit and run them all in
one transaction. If one script raises, the group is rolled back and each script is run again
alone, so the others still commit and the failing one gets its own exception: that is why a
script must be re-runnable and touch nothing but its `Tx` (see `store.base`).

The backend supplies one `Transactor` per writer thread: it knows how to begin, commit, roll back
and (for Postgres) retry a transaction that failed for a reason that is not the scripts' fault.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from stepwell.core.storage import StorageFailure

R = TypeVar("R")
Script = Callable[[Any], Any]
MAX_GROUP = 512
_STOP = object()


class Transactor(Protocol):
    """Runs groups of scripts for one writer thread, over its own connection."""

    def run(self, scripts: Sequence[Script]) -> list[Any]:
        """Run `scripts` in order in one transaction and commit it; return their values. If a
        script raises, roll back and re-raise its exception (nothing is committed)."""

    def close(self) -> None: ...


class GroupCommit:
    """Writer threads, one per transactor, draining one queue of scripts."""

    def __init__(self, transactors: Sequence[Transactor], *, name: str,
                 max_group: int = MAX_GROUP) -> None:
        self._transactors = list(transactors)
        self._name = name
        self._max_group = max_group
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pending = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for index, transactor in enumerate(self._transactors):
            thread = threading.Thread(target=self._write_loop, args=(transactor,),
                                      name=f"{self._name}-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    async def submit(self, script: Callable[[Any], R]) -> R:
        assert self._loop is not None, "store is not open"
        future: asyncio.Future[R] = self._loop.create_future()
        self.pending += 1
        self._queue.put((script, future))
        try:
            return await future
        finally:
            self.pending -= 1

    async def stop(self) -> None:
        """Commit what is queued, then stop the threads and close their connections."""
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        self._threads.clear()

    def _write_loop(self, transactor: Transactor) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                batch = [first]
                stop = False
                while len(batch) < self._max_group:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)
                self._commit_group(transactor, batch)
                if stop:
                    return
        finally:
            transactor.close()

    def _commit_group(self, transactor: Transactor,
                      batch: list[tuple[Script, asyncio.Future[Any]]]) -> None:
        results: list[tuple[asyncio.Future[Any], bool, Any]]
        try:
            values = transactor.run([script for script, _ in batch])
            results = [(future, True, value)
                       for (_, future), value in zip(batch, values, strict=True)]
        except StorageFailure as exc:
            # The database's condition (a full disk, a lock held elsewhere, an outage), not a
            # script's fault: every script would fail alone too, each after its own wait.
            results = [(future, False, exc) for _, future in batch]
        except Exception:
            # One script failed: run each alone so the others still commit and the failing one
            # gets its own exception.
            results = [(future, *_run_alone(transactor, script)) for script, future in batch]
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_resolve, results)


def _run_alone(transactor: Transactor, script: Script) -> tuple[bool, Any]:
    try:
        return True, transactor.run([script])[0]
    except Exception as exc:
        return False, exc


def _resolve(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in results:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
