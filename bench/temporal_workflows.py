"""Temporal workflows and activities of the benchmark (a module of its own, as the workflow
sandbox re-imports it). Instants are recorded in `common.MARKS`, passed through the sandbox, from
inside `sandbox_unrestricted()` blocks so the sandbox stays on for everything else."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import common

ACTIVITY_TIMEOUT = timedelta(seconds=120)


@activity.defn
async def body(i: int, n: int) -> int:
    return i + n


def _mark(kind: str, key: Any, guard_replay: bool = False) -> None:
    if guard_replay and workflow.unsafe.is_replaying():
        return
    with workflow.unsafe.sandbox_unrestricted():
        getattr(common.MARKS, kind).setdefault(key, time.perf_counter())


@workflow.defn(name="Work")
class Work:
    @workflow.run
    async def run(self, i: int, steps: int) -> int:
        _mark("started", i, guard_replay=True)
        total = 0
        for n in range(steps):
            total += await workflow.execute_activity(body, args=[i, n],
                                                     start_to_close_timeout=ACTIVITY_TIMEOUT)
        _mark("finished", i)
        return total


def _fan_class(k: int) -> type:
    async def run(self: Any, i: int) -> int:
        _mark("started", (i, k), guard_replay=True)
        out: int = await workflow.execute_activity(body, args=[i, k],
                                                   start_to_close_timeout=ACTIVITY_TIMEOUT)
        _mark("finished", (i, k))
        return out

    name = f"Fan{k}"
    run.__qualname__ = f"{name}.run"
    cls = type(name, (), {"run": workflow.run(run), "__module__": __name__,
                          "__qualname__": name})
    return workflow.defn(name=name)(cls)


FANS = [_fan_class(k) for k in range(common.FANOUT_FUNCTIONS)]
for _cls in FANS:
    globals()[_cls.__name__] = _cls


@workflow.defn(name="Nap")
class Nap:
    @workflow.run
    async def run(self, i: int) -> None:
        _mark("before", i, guard_replay=True)
        await workflow.sleep(common.TIMER_SLEEP_S)
        _mark("woke", i)


@workflow.defn(name="Herd")
class Herd:
    @workflow.run
    async def run(self, i: int, due: float) -> None:
        with workflow.unsafe.sandbox_unrestricted():
            if not workflow.unsafe.is_replaying():
                common.MARKS.before.setdefault(i, time.time())
        await workflow.sleep(max(0.0, due - workflow.now().timestamp()))
        with workflow.unsafe.sandbox_unrestricted():
            common.MARKS.woke.setdefault(i, time.time())


@workflow.defn(name="Waiter")
class Waiter:
    def __init__(self) -> None:
        self.got: dict[str, Any] | None = None

    @workflow.signal
    def resume(self, payload: dict[str, Any]) -> None:
        self.got = payload

    @workflow.run
    async def run(self, i: int) -> None:
        _mark("waiting", i, guard_replay=True)
        await workflow.wait_condition(lambda: self.got is not None,
                                      timeout=timedelta(hours=1))
        _mark("resumed", i)
        if self.got is None or self.got.get("id") != i:
            with workflow.unsafe.sandbox_unrestricted():
                common.MARKS.bad.append(f"workflow {i} got {self.got!r}")


@workflow.defn(name="Warm")
class Warm:
    @workflow.run
    async def run(self, i: int) -> int:
        out: int = await workflow.execute_activity(body, args=[i, 0],
                                                   start_to_close_timeout=ACTIVITY_TIMEOUT)
        _count()
        return out


@workflow.defn(name="Sleeper")
class Sleeper:
    @workflow.run
    async def run(self, i: int) -> None:
        if not workflow.unsafe.is_replaying():
            _count()
        await workflow.sleep(common.MEMORY_SLEEP_S)


def _count() -> None:
    with workflow.unsafe.sandbox_unrestricted():
        common.MARKS.count += 1


WORKFLOWS = [Work, *FANS, Nap, Herd, Waiter, Warm, Sleeper]
