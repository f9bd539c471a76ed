"""Time. Everything the engine schedules goes through a `Clock`, so tests can make it virtual."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> int:
        """UTC epoch milliseconds."""

    async def sleep_until(self, when_ms: int) -> None:
        """Return once `now() >= when_ms` (or earlier, spuriously; callers re-check)."""


class SystemClock:
    """Real time."""

    def now(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep_until(self, when_ms: int) -> None:
        delay = (when_ms - self.now()) / 1000
        if delay > 0:
            await asyncio.sleep(delay)


def wall_ms() -> int:
    """Real time, whatever the engine's clock says: leases protect against real process death."""
    return time.time_ns() // 1_000_000
