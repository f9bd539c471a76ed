"""The pool plain `def` step bodies run on: results, errors and context reach the awaiting
step, however many finish together; a shut-down pool cancels what has not started."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from stepwell.runtime.threads import StepThreads

current = contextvars.ContextVar("current", default="unset")


async def test_many_calls_get_their_own_results_errors_and_context() -> None:
    pool = StepThreads(4, "test-step")
    try:
        async def one(i: int) -> tuple[int, str, str]:
            current.set(f"call-{i}")
            return await pool.run(lambda: (i * 2, current.get(),
                                           threading.current_thread().name))

        results = await asyncio.gather(*(one(i) for i in range(300)))
        assert [r[0] for r in results] == [i * 2 for i in range(300)]
        assert [r[1] for r in results] == [f"call-{i}" for i in range(300)]
        assert {r[2] for r in results} <= {f"test-step_{n}" for n in range(4)}

        def fails() -> None:
            raise ValueError("from the body")

        with pytest.raises(ValueError, match="from the body"):
            await pool.run(fails)

        def stops() -> None:
            raise StopIteration

        with pytest.raises(RuntimeError, match="StopIteration"):
            await pool.run(stops)
        assert pool.submit(sum, [1, 2]).result(timeout=30) == 3
    finally:
        pool.shutdown(wait=True)


async def test_shutdown_cancels_the_calls_not_started() -> None:
    pool = StepThreads(1, "test-step")
    release = threading.Event()
    started = threading.Event()

    def block() -> str:
        started.set()
        release.wait(30)
        return "done"

    running = pool.run(block)
    await asyncio.to_thread(started.wait, 30)
    waiting = pool.run(lambda: "never")
    pool.shutdown(wait=False, cancel_futures=True)
    release.set()
    assert await running == "done"
    with pytest.raises(asyncio.CancelledError):
        await waiting
    with pytest.raises(RuntimeError, match="shut down"):
        pool.run(lambda: None)
