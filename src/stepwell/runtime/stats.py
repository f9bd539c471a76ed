"""What this process has done since it started, for `/metrics` (Prometheus) and the dashboard.

Counters live in memory, per process: with several workers on Postgres, scrape each and sum, as
is usual with Prometheus. What is shared (the queue) is read from the database at scrape time.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

# Upper bounds in seconds: from a fast in-process step to a slow API call or a long queue.
BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                              10.0, 30.0, 60.0, 300.0)


@dataclass(slots=True)
class Histogram:
    """Observations counted per bucket (not cumulative; `cumulative()` is Prometheus' form)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip([*map(str, BUCKETS), "+Inf"], self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass(slots=True)
class Stats:
    events_received: int = 0
    runs_created: int = 0
    runs_finished: Counter[str] = field(default_factory=Counter)     # by final status
    steps_committed: Counter[str] = field(default_factory=Counter)   # by step kind
    step_attempts_failed: int = 0
    sdk_calls: int = 0                  # requests to SDK apps
    sdk_checkpoints: int = 0            # checkpoint requests from SDK apps applied
    step_seconds: Histogram = field(default_factory=Histogram)       # `run` steps' bodies
    queue_wait_seconds: Histogram = field(default_factory=Histogram)  # due -> claimed
