"""Flow-control decisions, as pure functions of stored state and the time.

The runtime loads the state (a GCRA "theoretical arrival time", slot counts, a debounce window)
inside the transaction that creates or claims a run, asks these functions what to do, and stores
the new state in the same transaction. Keeping the arithmetic here makes it testable against
simple reference models (see tests/core/test_flow_properties.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stepwell.core.expressions import Expression, ExpressionEvalError

PRIORITY_MIN_S = -600
PRIORITY_MAX_S = 600


class FlowKeyError(ValueError):
    """A key expression that cannot give a key for this event (the run fails with this)."""


def evaluate_key(expr: Expression | None, event: Mapping[str, Any], *, option: str) -> str:
    """The key value as a string ("" when the option has no key).

    Strings are used as they are; numbers and booleans by their JSON text (so `event.data.userId`
    works for numeric ids); null, lists and maps are rejected, since silently lumping every event
    with a missing field under one key would be a surprising limit.
    """
    if expr is None:
        return ""
    try:
        value = expr.evaluate(event)
    except ExpressionEvalError as exc:
        raise FlowKeyError(
            f"{option} key '{expr.source}' failed for event '{event.get('name')}' "
            f"({event.get('id')}): {exc}") from None
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    raise FlowKeyError(
        f"{option} key '{expr.source}' gave {json.dumps(value)} for event "
        f"'{event.get('name')}' ({event.get('id')}); a key must be a string or a number")


@dataclass(frozen=True, slots=True)
class Gcra:
    """Generic cell rate algorithm over `limit` per `period_ms`, allowing `capacity` at once.

    The state is the theoretical arrival time (tat). Arithmetic is exact: times are scaled by
    `limit` (one unit = 1/limit ms), so the emission interval period/limit is the integer
    `period_ms` and no rounding error accumulates over many arrivals.
    """

    period_ms: int
    limit: int
    capacity: int

    @property
    def tolerance(self) -> int:
        return (self.capacity - 1) * self.period_ms

    def expiry(self, tat: int) -> int:
        """When the state stops mattering (epoch ms): afterwards it equals no state."""
        return -(-tat // self.limit)

    def allows(self, tat: int | None, now: int) -> tuple[bool, int]:
        """For a lossy limit: may an arrival at `now` pass? Returns (allowed, new tat)."""
        scaled = now * self.limit
        tat = scaled if tat is None else max(tat, scaled)
        if tat - scaled > self.tolerance:
            return False, tat
        return True, tat + self.period_ms

    def schedule(self, tat: int | None, now: int) -> tuple[int, int]:
        """For a delaying limit: the earliest start time (epoch ms) of an arrival at `now`
        behind all the earlier ones (FIFO), and the new tat."""
        scaled = now * self.limit
        tat = scaled if tat is None else max(tat, scaled)
        start = max(scaled, tat - self.tolerance)
        return -(-start // self.limit), max(tat, start) + self.period_ms


def throttle_gcra(limit: int, period_ms: int, burst: int) -> Gcra:
    """Throttle: `limit` starts per period, evenly spaced, plus `burst` extra at once.

    Inngest's worked example: limit 2, period 6s, burst 1 starts 3 runs at once, then one every
    3s.
    """
    return Gcra(period_ms, limit, limit + burst)


def rate_limit_gcra(limit: int, period_ms: int) -> Gcra:
    """Rate limit: up to `limit` at once, then one every period/limit; the rest are skipped."""
    return Gcra(period_ms, limit, limit)


def priority_offset_ms(expr: Expression | None, event: Mapping[str, Any]) -> int:
    """Seconds from the priority expression, clipped to -600..600; invalid results count as 0
    (Inngest's documented behaviour)."""
    if expr is None:
        return 0
    try:
        value = expr.evaluate(event)
    except ExpressionEvalError:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return 0
    return int(max(PRIORITY_MIN_S, min(PRIORITY_MAX_S, value)) * 1000)


def debounce_due(now: int, first_at: int, period_ms: int, timeout_ms: int | None) -> int:
    """When a debounced run fires: `period` after the latest event, but never later than
    `timeout` after the first event of the window."""
    due = now + period_ms
    if timeout_ms is not None:
        due = min(due, first_at + timeout_ms)
    return due


def batch_is_full(size: int, max_size: int) -> bool:
    return size >= max_size


def concurrency_blocked_by(held: Sequence[int], limits: Sequence[int]) -> int | None:
    """Index of the first limit that is full (held >= limit), or None if a slot is free on all."""
    for index, (count, limit) in enumerate(zip(held, limits, strict=True)):
        if count >= limit:
            return index
    return None
