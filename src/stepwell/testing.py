"""Test harness: a virtual clock that makes a year-long sleep take milliseconds."""

from __future__ import annotations

import asyncio
import datetime
from typing import TYPE_CHECKING, Protocol

from stepwell.core.durations import parse_duration_ms
from stepwell.runtime.clock import wall_ms

if TYPE_CHECKING:
    from collections.abc import Iterable


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
