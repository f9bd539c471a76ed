"""What this process has done since it started, for `/metrics` (Prometheus) and the dashboard.

Counters live in memory, per process: with several workers on Postgres, scrape each and sum, as
is usual with Prometheus. What is shared (the queue) is read from the database at scrape time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class Stats:
    events_received: int = 0
    runs_created: int = 0
    runs_finished: Counter[str] = field(default_factory=Counter)     # by final status
    steps_committed: Counter[str] = field(default_factory=Counter)   # by step kind
    step_attempts_failed: int = 0
