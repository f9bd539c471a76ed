"""Test harness: a virtual clock that makes a year-long sleep take milliseconds."""

from __future__ import annotations

import asyncio
import datetime
import inspect
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from stepwell.core.durations import parse_duration_ms
from stepwell.core.serialize import to_json_value
from stepwell.runtime.clock import wall_ms

if TYPE_CHECKING:
    from collections.abc import Iterable

    from stepwell.runtime.determinism import Divergence
    from stepwell.runtime.engine import Engine
    from stepwell.sdk.app import App
    from stepwell.sdk.step import StepRequest


class _Driven(Protocol):
    """What the clock needs from an engine to advance deterministically."""

    async def idle(self) -> None: ...

    async def next_due_at(self) -> int | None: ...


class VirtualClock:
    """Virtual time for `Engine(..., clock=VirtualClock())`.

    `advance(d)` first lets all ready work run to quiescence, then moves time forward to each due
    item (sleep, timeout, retry backoff, cron tick...) in order, letting the engine settle after
    each, and returns when the engine is idle at `now + d`.

    Engines on a virtual clock also check every run for determinism (`Engine(
    check_determinism=...)`): each run is replayed from its memos at each suspension and at its
    end, so a step argument computed outside a step fails the test, not production.
    """

    virtual = True      # engines read it: tests check determinism by default

    def __init__(self, start: int | datetime.datetime | None = None) -> None:
        if start is None:
            self._now = wall_ms()
        elif isinstance(start, datetime.datetime):
            self._now = int(start.timestamp() * 1000)
        else:
            self._now = int(start)
        self._sleepers: list[tuple[int, asyncio.Future[None]]] = []
        self._engines: list[_Driven] = []

    def attach(self, engine: _Driven) -> None:
        self._engines.append(engine)

    def detach(self, engine: _Driven) -> None:
        if engine in self._engines:
            self._engines.remove(engine)

    def now(self) -> int:
        return self._now

    async def sleep_until(self, when_ms: int) -> None:
        if when_ms <= self._now:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((when_ms, future))
        try:
            await future
        finally:
            self._sleepers = [(w, f) for w, f in self._sleepers if f is not future]

    def _set(self, when_ms: int) -> None:
        self._now = max(self._now, when_ms)
        for due, future in list(self._sleepers):
            if due <= self._now and not future.done():
                future.set_result(None)

    async def _settle(self, engines: Iterable[_Driven]) -> None:
        for engine in engines:
            await engine.idle()

    async def advance(self, duration: str | int | float | datetime.timedelta) -> None:
        """Move time forward by `duration`, firing everything due on the way, in time order."""
        target = self._now + parse_duration_ms(duration, what="advance duration")
        await self._settle(self._engines)
        while True:
            dues = [d for d in [await e.next_due_at() for e in self._engines] if d is not None]
            upcoming = min(dues) if dues else None
            if upcoming is None or upcoming > target:
                break
            self._set(upcoming)
            await self._settle(self._engines)
        self._set(target)
        await self._settle(self._engines)

    async def advance_to(self, when: datetime.datetime) -> None:
        await self.advance(max(0, int(when.timestamp() * 1000) - self._now) / 1000)


class DivergenceError(AssertionError):
    """`replay` found the code going another way than the recorded run (the same report as
    `stepwell check`): `divergence` has the kind, step, recorded vs now and the fix."""

    def __init__(self, run_id: str, divergence: Divergence) -> None:
        self.run_id = run_id
        self.divergence = divergence
        super().__init__(f"run {run_id}: step '{divergence.step_id}' ({divergence.kind}): the "
                         f"history has {divergence.recorded}; the code: {divergence.now}. "
                         f"Fix: {divergence.fix}")


@dataclass(slots=True)
class ReplayResult:
    """How a local replay ended: the handler's `output` (or `error`, an exception it raised),
    or `stopped` at the recording's frontier (a step still waiting, or an unrecorded step and
    `continue_=False`); the number of recorded steps replayed and the ids of the steps
    executed past the recording (`continue_=True`)."""

    output: Any = None
    error: BaseException | None = None
    stopped: bool = False
    steps_replayed: int = 0
    executed: list[str] = field(default_factory=list)


class _LocalSteps:
    """Steps past the recorded end, run in this process with no engine: `run` calls its
    function; sleeps pass at once (virtual time); waits and invokes time out (None); sent
    events are not sent (their ids are made up)."""

    def __init__(self) -> None:
        self.executed: list[str] = []

    async def publish(self, topic: str, data: Any, channel: str | None) -> int:
        return 0                  # nothing is published by a local replay

    async def perform(self, request: StepRequest) -> Any:
        self.executed.append(request.step_id)
        if request.kind == "run":
            assert request.fn is not None
            result = request.fn(*request.args, **request.kwargs)
            return to_json_value(await result if inspect.isawaitable(result) else result,
                                 what=f"step '{request.step_id}'")
        if request.kind == "send":
            return [f"replay-{request.step_id}-{n}" for n in range(len(request.events))]
        return None


async def replay(history: str | Path | dict[str, Any], app: App, *,
                 continue_: bool = False) -> ReplayResult:
    """Re-run a recorded run (`stepwell runs export RUN`, or `GET /v1/runs/{id}/history`)
    against the code of `app`, in this process, under pytest or a debugger.

    Each recorded step returns its recorded result (no step body is called); the first
    divergence raises `DivergenceError`, the report `stepwell check` gives. With `continue_`,
    steps the recording does not have run here (see `_LocalSteps`), so a fix can be tried on
    a production run's data."""
    from stepwell.runtime.history import History, read_history, replay_history

    loaded = (History.from_json(history) if isinstance(history, dict)
              else read_history(history))
    fn = next((f for f in app.functions.values() if f.qualified_id == loaded.function_id),
              None)
    if fn is None:
        known = ", ".join(sorted(f.qualified_id for f in app.functions.values())) or "none"
        raise LookupError(f"the history is a run of {loaded.function_id!r}, which app "
                          f"{app.id!r} does not have (its functions: {known})")
    local = _LocalSteps() if continue_ else None
    with ThreadPoolExecutor(1, thread_name_prefix="stepwell-replay") as pool:
        replayed = await replay_history(fn, loaded, pool, execute=local)
    if replayed.divergence is not None:
        raise DivergenceError(loaded.run_id, replayed.divergence)
    return ReplayResult(output=replayed.end.output, error=replayed.end.error,
                        stopped=replayed.end.stopped, steps_replayed=replayed.steps_replayed,
                        executed=local.executed if local is not None else [])


async def export_history(engine: Engine, run_id: str) -> dict[str, Any]:
    """A run's recorded history, as `stepwell runs export` writes it: record a run in a test
    with one version of the code, then `replay` it against the next."""
    from stepwell.service_deploy import export_history as export

    history = await export(engine._worker, run_id)
    if history is None:
        raise LookupError(f"no run with id {run_id!r}")
    return history
