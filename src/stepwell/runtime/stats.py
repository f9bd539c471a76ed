"""What this process has done since it started, for `/metrics` (Prometheus) and the dashboard.

Counters live in memory, per process: with several workers on Postgres, scrape each and sum, as
is usual with Prometheus. What is shared (the queue) is read from the database at scrape time.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from stepwell.runtime.scripts import Effects
    from stepwell.store.base import UsageRow

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
    # Per function (its qualified id), for operators: a function's throughput and latency.
    runs_started: Counter[str] = field(default_factory=Counter)
    function_runs_finished: Counter[tuple[str, str]] = field(default_factory=Counter)
    function_step_seconds: defaultdict[str, Histogram] = field(
        default_factory=lambda: defaultdict(Histogram))
    steps_committed: Counter[str] = field(default_factory=Counter)   # by step kind
    step_attempts_failed: int = 0
    sdk_calls: int = 0                  # requests to SDK apps
    sdk_checkpoints: int = 0            # checkpoint requests from SDK apps applied
    step_seconds: Histogram = field(default_factory=Histogram)       # `run` steps' bodies
    queue_wait_seconds: Histogram = field(default_factory=Histogram)  # due -> claimed
    # Tokens steps spent on models, by (function, model, "input" | "output"); "calls" counts
    # requests. Model names are capped per function (`TOP_MODELS`, the rest as "other").
    model_tokens: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    _models: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def count(self, effects: Effects) -> None:
        """What a committed script did."""
        self.events_received += len(effects.event_ids)
        self.runs_created += effects.runs_created
        if effects.started:
            self.runs_started.update(effects.started)
        if effects.ended:
            self.runs_finished.update(status for _, status in effects.ended)
            self.function_runs_finished.update(effects.ended)

    def tokens_used(self, function_id: str, rows: Iterable[UsageRow]) -> None:
        """Count the tokens of committed usage rows (a bounded set of model labels)."""
        for row in rows:
            seen = self._models[function_id]
            model = row.model
            if model not in seen:
                if len(seen) >= TOP_MODELS:
                    model = OTHER
                else:
                    seen.add(model)
            self.model_tokens[(function_id, model, "input")] += row.input_tokens
            self.model_tokens[(function_id, model, "output")] += row.output_tokens
            self.model_tokens[(function_id, model, "calls")] += row.calls

    def step_took(self, function_id: str, seconds: float) -> None:
        self.step_seconds.observe(seconds)
        self.function_step_seconds[function_id].observe(seconds)


TOP_MODELS = 20         # model names counted per function in /metrics; the rest is "other"
TOP_KEYS = 10           # concurrency keys shown per function in /metrics; the rest is "other"
OTHER = "other"


@dataclass(frozen=True, slots=True)
class Backlog:
    """Runs due and waiting for a worker: how many and how long the oldest has waited."""

    count: int
    oldest_seconds: float


def backlog(rows: list[tuple[str, str | None, int, int]], now: int, top: int = TOP_KEYS
            ) -> tuple[dict[str, Backlog], dict[tuple[str, str], Backlog]]:
    """`Tx.run_backlog` rows as the backlog per function and per (function, concurrency key):
    the `top` keys with the most runs waiting per function, the others summed as "other", so
    that a key per customer cannot grow the metrics without bound."""
    by_function: dict[str, list[tuple[str | None, int, int]]] = {}
    for function_id, key, count, oldest in rows:
        by_function.setdefault(function_id, []).append((key, count, oldest))
    functions: dict[str, Backlog] = {}
    keys: dict[tuple[str, str], Backlog] = {}

    def age(due: int) -> float:
        return max(0, now - due) / 1000

    for function_id, groups in by_function.items():
        functions[function_id] = Backlog(sum(c for _, c, _ in groups),
                                         age(min(o for _, _, o in groups)))
        keyed = sorted(((k, c, o) for k, c, o in groups if k is not None),
                       key=lambda g: (-g[1], g[0]))
        for key, count, oldest in keyed[:top]:
            keys[(function_id, key)] = Backlog(count, age(oldest))
        rest = keyed[top:]
        if rest:
            keys[(function_id, OTHER)] = Backlog(sum(c for _, c, _ in rest),
                                                 age(min(o for _, _, o in rest)))
    return functions, keys
