"""Property tests for the flow-control decisions in `stepwell.core.flow`, against reference models.

Each GCRA property below is one that GCRA truly guarantees (derivations in the comments).
Two "obvious" properties do NOT hold for GCRA and are pinned as such rather than asserted:
a rate limit of `limit` per `period` is not a sliding window (up to `2*limit - 1` may pass in one
window of length `period`), and neither is a throttle (Inngest's own worked example starts 4
runs inside 6 s with limit 2 + burst 1 per 6 s).

Regression examples for bugs these properties found (float GCRA rounding at exact boundaries,
a debounce timeout shorter than the period, NaN priority, and a claim batch parking the older
items of a concurrency key) stay below as plain tests with their minimal examples.
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import stepwell
from stepwell.core.expressions import compile_expression
from stepwell.core.flow import (
    FlowKeyError,
    batch_is_full,
    concurrency_blocked_by,
    debounce_due,
    evaluate_key,
    priority_offset_ms,
    rate_limit_gcra,
    throttle_gcra,
)
from stepwell.testing import VirtualClock

EPOCH_2026 = 1_767_225_600_000  # the `clock` fixture's start: 2026-01-01T00:00:00Z


limits = st.integers(1, 20)
periods_ms = st.integers(1, 3600).map(lambda s: s * 1000)   # 1s..1h, whole seconds
bursts = st.integers(1, 5)
origins = st.sampled_from([0, 3810, EPOCH_2026]) | st.integers(0, 2 * EPOCH_2026)


@st.composite
def arrival_times(draw: st.DrawFn, period_ms: int, limit: int, *, max_size: int = 60
                  ) -> list[int]:
    """Sorted integer ms times, mixing simultaneous bursts, congestion and sparse gaps."""
    origin = draw(origins)
    spacing = period_ms // limit
    gap = (st.sampled_from([0, 0, 1]) | st.integers(0, 2 * spacing + 1)
           | st.integers(0, 3 * period_ms))
    gaps = draw(st.lists(gap, min_size=1, max_size=max_size))
    times, now = [], origin
    for gap in gaps:
        now += gap
        times.append(now)
    return times


def run_throttle(limit: int, period_ms: int, burst: int, arrivals: list[int]) -> list[int]:
    """Start times as the runtime computes them: one GCRA state per key, arrivals in order."""
    gcra, tat, starts = throttle_gcra(limit, period_ms, burst), None, []
    for now in arrivals:
        start, tat = gcra.schedule(tat, now)
        starts.append(start)
    return starts


def run_rate_limit(limit: int, period_ms: int, arrivals: list[int]) -> list[bool]:
    """Allowed or skipped, as admission does it: the new tat is stored only when allowed."""
    gcra, tat, allowed = rate_limit_gcra(limit, period_ms), None, []
    for now in arrivals:
        ok, new_tat = gcra.allows(tat, now)
        if ok:
            tat = new_tat
        allowed.append(ok)
    return allowed


def exact_throttle(limit: int, period_ms: int, burst: int, arrivals: list[int]) -> list[int]:
    """Reference: GCRA virtual scheduling in exact rational arithmetic, starts rounded up to
    whole ms. Emission interval T = period/limit, tolerance (limit + burst - 1) * T."""
    interval = Fraction(period_ms, limit)
    tolerance = (limit + burst - 1) * interval
    tat: Fraction | None = None
    starts = []
    for now in arrivals:
        tat = Fraction(now) if tat is None else max(tat, Fraction(now))
        starts.append(math.ceil(max(Fraction(now), tat - tolerance)))
        tat += interval
    return starts


def exact_rate_limit(limit: int, period_ms: int, arrivals: list[int]) -> list[bool]:
    """Reference: GCRA as the continuous-state leaky bucket (the other textbook formulation),
    exact: the bucket drains one unit per ms; each conforming arrival adds T; an arrival
    conforms if the drained level is at most the tolerance (limit - 1) * T."""
    interval = Fraction(period_ms, limit)
    tolerance = (limit - 1) * interval
    level, last = Fraction(0), None
    allowed = []
    for now in arrivals:
        drained = level if last is None else max(Fraction(0), level - (now - last))
        if drained > tolerance:
            allowed.append(False)
            continue
        level, last = drained + interval, now
        allowed.append(True)
    return allowed


# --------------------------------------------------------------------------------- throttle


@settings(max_examples=300)
@given(data=st.data(), limit=limits, period_ms=periods_ms, burst=bursts)
def test_throttle_is_fifo_never_drops_and_respects_the_gcra_bound(
        data: st.DataObject, limit: int, period_ms: int, burst: int) -> None:
    arrivals = data.draw(arrival_times(period_ms, limit))
    starts = run_throttle(limit, period_ms, burst, arrivals)
    assert len(starts) == len(arrivals)                                  # none dropped
    assert all(s >= a for s, a in zip(starts, arrivals, strict=True))    # never early
    assert starts == sorted(starts)                                      # FIFO
    # GCRA bound. With T = period/limit and capacity C = limit + burst, every start s_j obeys
    # s_j >= tat_j - (C-1)T and tat grows by T per arrival, so n starts spanning D satisfy
    # D >= (n - C) T; starts are rounded up to whole ms, hence the +1:
    #     (n - C) * period <= (D + 1) * limit.
    # The sliding-window corollary: at most 2*limit + burst starts in any window of one period
    # (NOT limit + burst; see test_throttle_is_not_a_sliding_window_of_limit_plus_burst).
    capacity = limit + burst
    for i in range(len(starts)):
        for j in range(i + capacity, len(starts)):
            n, span = j - i + 1, starts[j] - starts[i]
            assert (n - capacity) * period_ms <= (span + 1) * limit, (i, j, starts)
    window_counts = [sum(1 for t in starts[i:] if t < s + period_ms)
                     for i, s in enumerate(starts)]
    assert max(window_counts) <= 2 * limit + burst


@settings(max_examples=200)
@given(data=st.data(), limit=limits, period_ms=periods_ms, burst=bursts)
def test_throttle_starts_sparse_arrivals_immediately(
        data: st.DataObject, limit: int, period_ms: int, burst: int) -> None:
    spacing = -(-period_ms // limit)                                     # ceil(period / limit)
    origin = data.draw(origins)
    gaps = data.draw(st.lists(st.integers(spacing, 3 * spacing), min_size=1, max_size=40))
    arrivals = [origin + sum(gaps[:i]) for i in range(len(gaps))]
    assert run_throttle(limit, period_ms, burst, arrivals) == arrivals


@pytest.mark.parametrize("origin", [0, EPOCH_2026])
def test_throttle_worked_example(origin: int) -> None:
    """Inngest: limit 2 per 6s, burst 1; six events 0.5 s apart start three at once, then one
    every 3 s."""
    arrivals = [origin + 500 * i for i in range(6)]
    starts = run_throttle(2, 6000, 1, arrivals)
    assert [s - origin for s in starts] == [0, 500, 1000, 3000, 6000, 9000]


def test_throttle_is_not_a_sliding_window_of_limit_plus_burst() -> None:
    """The worked example itself starts 4 runs (0, 0.5, 1, 3 s) inside one 6 s window: "limit +
    burst per period" is a rate, not a sliding-window cap."""
    starts = run_throttle(2, 6000, 1, [500 * i for i in range(6)])
    assert sum(1 for s in starts if s < 6000) == 4


@settings(max_examples=300)
@example(limit=6, period_ms=1000, burst=1, arrivals=[EPOCH_2026] * 7)
@example(limit=3, period_ms=10_000, burst=1,
         arrivals=[3990, 3990, 3990, 3990, 6827, 6827, 6827])
@given(limit=limits, period_ms=periods_ms, burst=bursts,
       arrivals=st.lists(st.integers(0, 2 * EPOCH_2026), min_size=1, max_size=40).map(sorted))
def test_throttle_matches_exact_gcra(limit: int, period_ms: int, burst: int,
                                     arrivals: list[int]) -> None:
    assert run_throttle(limit, period_ms, burst, arrivals) == exact_throttle(
        limit, period_ms, burst, arrivals)


def test_throttle_full_burst_starts_at_once_minimal() -> None:
    """limit 6 per 1s, burst 1: capacity 7, so seven simultaneous arrivals start at once."""
    assert run_throttle(6, 1000, 1, [EPOCH_2026] * 7) == [EPOCH_2026] * 7


# ------------------------------------------------------------------------------- rate limit


@settings(max_examples=300)
@given(data=st.data(), limit=limits, period_ms=periods_ms)
def test_rate_limit_respects_the_gcra_bound(data: st.DataObject, limit: int,
                                            period_ms: int) -> None:
    arrivals = data.draw(arrival_times(period_ms, limit))
    allowed = run_rate_limit(limit, period_ms, arrivals)
    passed = [t for t, ok in zip(arrivals, allowed, strict=True) if ok]
    assert passed, "the first arrival is always allowed"
    # GCRA bound: n allowed arrivals spanning D satisfy D >= (n - limit) * T, i.e.
    #     (n - limit) * period <= D * limit,
    # so a window [s, s + period) admits at most 2*limit - 1 (a burst of `limit`, then one per
    # T): NOT `limit` (test_rate_limit_is_not_a_sliding_window).
    for i in range(len(passed)):
        for j in range(i + limit, len(passed)):
            n, span = j - i + 1, passed[j] - passed[i]
            assert (n - limit) * period_ms <= span * limit, (i, j, passed)
    window_counts = [sum(1 for t in passed[i:] if t < s + period_ms)
                     for i, s in enumerate(passed)]
    assert max(window_counts) <= 2 * limit - 1


@settings(max_examples=300)
@given(data=st.data(), limit=limits, period_ms=periods_ms)
def test_rate_limit_never_refuses_after_a_quiet_period_or_at_the_steady_rate(
        data: st.DataObject, limit: int, period_ms: int) -> None:
    """Liveness GCRA guarantees: after an allowed arrival b, tat <= b + period (tat was at most
    b + tolerance before b added T), so an arrival >= period after the last allowed one passes;
    and when every gap is >= T, tat <= now at each arrival, so all pass."""
    arrivals = data.draw(arrival_times(period_ms, limit))
    allowed = run_rate_limit(limit, period_ms, arrivals)
    last_allowed: int | None = None
    for now, ok in zip(arrivals, allowed, strict=True):
        if last_allowed is not None and now - last_allowed >= period_ms:
            assert ok, (now, last_allowed)
        if ok:
            last_allowed = now
    spacing = -(-period_ms // limit)
    origin = data.draw(origins)
    gaps = data.draw(st.lists(st.integers(spacing, 3 * spacing), min_size=1, max_size=40))
    sparse = [origin + sum(gaps[:i]) for i in range(len(gaps))]
    assert all(run_rate_limit(limit, period_ms, sparse))


def test_rate_limit_is_not_a_sliding_window() -> None:
    """GCRA, as documented: limit 2 per 1m lets 2 through at once, then one slot every 30 s, so
    three pass within 30 s (the e2e test_rate_limit_skips_excess_and_records_them relies on it)."""
    assert run_rate_limit(2, 60_000, [0, 0, 0, 30_000, 30_000]) == [True, True, False, True,
                                                                     False]


@settings(max_examples=300)
@example(limit=6, period_ms=1000, quiet_ms=0, start=EPOCH_2026, history=[])
@example(limit=3, period_ms=10_000, quiet_ms=0, start=3810, history=[])
@given(limit=limits, period_ms=periods_ms, quiet_ms=st.integers(0, 10**7),
       start=st.integers(0, 2 * EPOCH_2026),
       history=st.lists(st.integers(0, 10**7), max_size=30).map(sorted))
def test_rate_limit_allows_a_full_burst_after_a_quiet_period(
        limit: int, period_ms: int, quiet_ms: int, start: int, history: list[int]) -> None:
    """After `period` without an allowed arrival, `limit` simultaneous arrivals all pass
    (GCRA: tat <= last allowed + period <= now)."""
    before = [start + t for t in history]
    now = (before[-1] if before else start) + period_ms + quiet_ms
    allowed = run_rate_limit(limit, period_ms, [*before, *[now] * (limit + 1)])
    assert allowed[len(before):] == [True] * limit + [False]


def test_rate_limit_full_burst_minimal() -> None:
    """rate_limit 6 per 1s: six events at once at the fixtures' start time must all pass."""
    assert run_rate_limit(6, 1000, [EPOCH_2026] * 6) == [True] * 6


@settings(max_examples=300)
@example(limit=3, period_ms=10_000, arrivals=[3810, 3810, 3810])
@given(limit=limits, period_ms=periods_ms,
       arrivals=st.lists(st.integers(0, 2 * EPOCH_2026), min_size=1, max_size=40).map(sorted))
def test_rate_limit_matches_exact_leaky_bucket(limit: int, period_ms: int,
                                               arrivals: list[int]) -> None:
    assert run_rate_limit(limit, period_ms, arrivals) == exact_rate_limit(
        limit, period_ms, arrivals)


@settings(max_examples=300)
@given(limit=limits, period_ms=periods_ms,
       arrivals=st.lists(st.integers(0, 10**8), min_size=1, max_size=40).map(sorted))
def test_exact_references_agree_with_each_other(limit: int, period_ms: int,
                                                arrivals: list[int]) -> None:
    """The two exact formulations (virtual scheduling, leaky bucket) are the same algorithm:
    a rate limit allows exactly the arrivals whose throttle start (burst 0) is not delayed."""
    interval = Fraction(period_ms, limit)
    tolerance = (limit - 1) * interval
    tat: Fraction | None = None
    virtual = []
    for now in arrivals:
        t = Fraction(now) if tat is None else max(tat, Fraction(now))
        ok = t - now <= tolerance
        virtual.append(ok)
        if ok:
            tat = t + interval
    assert virtual == exact_rate_limit(limit, period_ms, arrivals)


# --------------------------------------------------------------------------------- debounce


def engine_debounce(times: list[int], period_ms: int, timeout_ms: int | None
                    ) -> list[tuple[int, int]]:
    """(fire time, index of the event it runs with), the way admission drives `debounce_due`:
    the first event opens the window due `period` later; each later event sets
    due = debounce_due(now, first_at, period, timeout) and becomes the run's event; the window
    fires at `due` (on the virtual clock before any event sent at that same time)."""
    fires = []
    window: dict[str, int] | None = None
    for index, now in enumerate(times):
        if window is not None and window["due"] <= now:
            fires.append((window["due"], window["event"]))
            window = None
        if window is None:
            window = {"first_at": now, "due": now + period_ms, "event": index}
        else:
            window["due"] = debounce_due(now, window["first_at"], period_ms, timeout_ms)
            window["event"] = index
    if window is not None:
        fires.append((window["due"], window["event"]))
    return fires


def reference_debounce(times: list[int], period_ms: int, timeout_ms: int | None
                       ) -> list[tuple[int, int]]:
    """Straightforward: a window takes events while each comes sooner than `period` after the
    previous one and sooner than `timeout` after the first; it fires at the earlier of those
    two deadlines, with its last event."""
    fires, i = [], 0
    while i < len(times):
        cap = math.inf if timeout_ms is None else times[i] + timeout_ms
        j = i
        while j + 1 < len(times) and times[j + 1] < min(times[j] + period_ms, cap):
            j += 1
        fires.append((int(min(times[j] + period_ms, cap)), j))
        i = j + 1
    return fires


@settings(max_examples=400)
@given(data=st.data(), period_s=st.integers(1, 600), timeout=st.none() | st.integers(0, 1200))
def test_debounce_fires_once_per_window_with_the_last_event(
        data: st.DataObject, period_s: int, timeout: int | None) -> None:
    period_ms = period_s * 1000
    timeout_ms = None if timeout is None else period_ms + timeout * 1000   # timeout >= period
    gaps = data.draw(st.lists(st.integers(0, period_ms // 4) | st.integers(0, 2 * period_ms),
                              min_size=1, max_size=50))
    times = [sum(gaps[:i + 1]) for i in range(len(gaps))]
    fires = engine_debounce(times, period_ms, timeout_ms)
    assert fires == reference_debounce(times, period_ms, timeout_ms)
    # every event belongs to exactly one window; windows are consecutive runs of events
    assert [index for _, index in fires] == sorted({index for _, index in fires})
    assert fires[-1][1] == len(times) - 1
    first = 0
    for fire_at, last in fires:
        first_at, last_at = times[first], times[last]
        assert fire_at > last_at                            # after (and with) its last event
        assert last + 1 == len(times) or times[last + 1] >= fire_at   # nothing came in between
        assert fire_at <= last_at + period_ms               # never later than period after it
        if timeout_ms is None:
            assert fire_at == last_at + period_ms
        else:
            assert fire_at <= first_at + timeout_ms         # nor after the timeout cap
            assert fire_at in (last_at + period_ms, first_at + timeout_ms)
        for earlier, later in zip(times[first:last], times[first + 1:last + 1], strict=True):
            assert later - earlier < period_ms              # each event postponed the window
        first = last + 1


@settings(max_examples=200)
@given(now=st.integers(0, 10**13), first_back=st.integers(0, 10**9),
       period_ms=periods_ms, timeout_ms=st.none() | st.integers(1000, 7 * 86_400_000))
def test_debounce_due_is_period_after_now_capped_by_timeout(
        now: int, first_back: int, period_ms: int, timeout_ms: int | None) -> None:
    first_at = now - first_back
    due = debounce_due(now, first_at, period_ms, timeout_ms)
    assert due <= now + period_ms
    if timeout_ms is None:
        assert due == now + period_ms
    else:
        assert due <= first_at + timeout_ms
        assert due in (now + period_ms, first_at + timeout_ms)


async def test_debounce_with_timeout_shorter_than_period_never_fires_after_the_cap(
        make_engine: Any, clock: VirtualClock) -> None:
    """period 10s, timeout 5s (accepted by the config); events at 0 and 6 s. The timeout caps
    even the first event's window: the run fires at 5 s with event 0; event 1 opens a new
    window that the cap closes at 6 + 5 = 11 s."""
    app = stepwell.App("t")
    starts: list[tuple[int, int]] = []

    @app.function(id="d", trigger="app/d", debounce={"period": "10s", "timeout": "5s"})
    async def d(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.run("s", lambda: starts.append((ctx.event.data["n"], clock.now() - t0)))

    async with make_engine(app) as engine:
        t0 = clock.now()
        await engine.send("app/d", {"n": 0})
        await clock.advance("6s")
        await engine.send("app/d", {"n": 1})
        await clock.advance("1m")
    assert starts == [(0, 5000), (1, 11_000)]


# ------------------------------------------------------------------------------------ batch


def engine_batches(events: list[tuple[int, str]], max_size: int, timeout_ms: int
                   ) -> list[tuple[int, str, list[int]]]:
    """(flush time, key, event indexes), the way admission collects: add the event to its key's
    batch; a full batch (`batch_is_full`) flushes at once and drops its timer; the first event
    of a batch arms a timer `timeout` later; timers fire before events sent at the same time."""
    pending: dict[str, list[int]] = {}
    timers: dict[str, int] = {}
    out: list[tuple[int, str, list[int]]] = []

    def fire_timers(until: float) -> None:
        for key, due in sorted(timers.items(), key=lambda kv: kv[1]):
            if due <= until:
                del timers[key]
                out.append((due, key, pending.pop(key)))

    for index, (now, key) in enumerate(events):
        fire_timers(now)
        batch = pending.setdefault(key, [])
        batch.append(index)
        if batch_is_full(len(batch), max_size):
            timers.pop(key, None)
            out.append((now, key, pending.pop(key)))
        elif len(batch) == 1:
            timers[key] = now + timeout_ms
    fire_timers(math.inf)
    return out


def reference_batches(events: list[tuple[int, str]], max_size: int, timeout_ms: int
                      ) -> list[tuple[int, str, list[int]]]:
    """Per key: a batch starts with an event and takes the key's following events while it has
    fewer than max_size and they come before first + timeout; full batches flush with their last
    event, others at first + timeout."""
    out = []
    for key in dict.fromkeys(k for _, k in events):
        mine = [i for i, (_, k) in enumerate(events) if k == key]
        while mine:
            first_at = events[mine[0]][0]
            batch = [i for i in mine if events[i][0] < first_at + timeout_ms][:max_size]
            flush = events[batch[-1]][0] if len(batch) == max_size else first_at + timeout_ms
            out.append((flush, key, batch))
            mine = mine[len(batch):]
    return out


@settings(max_examples=300)
@given(max_size=st.integers(1, 8), timeout_s=st.integers(1, 60),
       steps=st.lists(st.tuples(st.integers(0, 30_000), st.sampled_from("abc")),
                      min_size=1, max_size=60))
def test_batch_every_event_in_exactly_one_batch_in_order(
        max_size: int, timeout_s: int, steps: list[tuple[int, str]]) -> None:
    timeout_ms = timeout_s * 1000
    events, now = [], 0
    for gap, key in steps:
        now += gap
        events.append((now, key))
    batches = engine_batches(events, max_size, timeout_ms)
    assert sorted(batches) == sorted(reference_batches(events, max_size, timeout_ms))
    assert sorted(i for _, _, b in batches for i in b) == list(range(len(events)))
    assert all(1 <= len(b) <= max_size for _, _, b in batches)
    assert [t for t, _, _ in batches] == sorted(t for t, _, _ in batches)
    for key in "abc":
        mine = [b for _, k, b in batches if k == key]
        assert [i for b in mine for i in b] == [i for i, (_, k) in enumerate(events) if k == key]
    for flush_at, key, batch in batches:
        first_at = events[batch[0]][0]
        assert all(events[i][1] == key for i in batch)
        assert all(first_at <= events[i][0] < first_at + timeout_ms for i in batch)
        assert flush_at <= first_at + timeout_ms
        assert flush_at == first_at + timeout_ms or (
            len(batch) == max_size and flush_at == events[batch[-1]][0])


@given(size=st.integers(0, 200), max_size=st.integers(1, 100))
def test_batch_is_full(size: int, max_size: int) -> None:
    assert batch_is_full(size, max_size) == (size >= max_size)


# ------------------------------------------------------------------------------ concurrency


@given(pairs=st.lists(st.tuples(st.integers(0, 10), st.integers(1, 10)), max_size=4))
def test_concurrency_blocked_by_first_full_limit(pairs: list[tuple[int, int]]) -> None:
    held, limit_values = [h for h, _ in pairs], [n for _, n in pairs]
    full = [i for i, (h, n) in enumerate(pairs) if h >= n]
    assert concurrency_blocked_by(held, limit_values) == (full[0] if full else None)


def test_concurrency_blocked_by_needs_one_count_per_limit() -> None:
    with pytest.raises(ValueError):
        concurrency_blocked_by([0, 1], [1])


# --------------------------------------------------------------------------------- priority

PRIORITY = compile_expression("event.data.p")


def reference_priority_ms(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return 0
    return math.trunc(min(600, max(-600, value)) * 1000)


@given(value=st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False))
def test_priority_offset_is_clipped_seconds(value: float) -> None:
    offset = priority_offset_ms(PRIORITY, {"name": "e", "data": {"p": value}})
    assert offset == reference_priority_ms(value)
    assert -600_000 <= offset <= 600_000


@given(value=st.none() | st.booleans() | st.text(max_size=5)
       | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=2),
                                                                 st.integers(), max_size=2))
def test_priority_offset_is_zero_for_non_numbers(value: Any) -> None:
    assert priority_offset_ms(PRIORITY, {"name": "e", "data": {"p": value}}) == 0


@pytest.mark.parametrize(("source", "data"), [
    ("event.data.p", {}),                           # missing field: evaluation error
    ("event.data.p.q", {"p": 3}),                   # field of a number
    ("event.data.p + 1", {"p": "x"}),               # no such overload
    ("event.data.p / event.data.z", {"p": 1, "z": 0}),   # division by zero
])
def test_priority_offset_is_zero_on_errors(source: str, data: dict[str, Any]) -> None:
    assert priority_offset_ms(compile_expression(source), {"name": "e", "data": data}) == 0


def test_priority_none_and_seed_expression() -> None:
    assert priority_offset_ms(None, {"data": {}}) == 0
    seed = compile_expression("event.data.plan === 'enterprise' ? 100 : 0")
    assert priority_offset_ms(seed, {"data": {"plan": "enterprise"}}) == 100_000
    assert priority_offset_ms(seed, {"data": {"plan": "free"}}) == 0


def test_priority_nan_counts_as_invalid() -> None:
    """Events accept NaN (validate_event_payload lets it through); NaN is no priority."""
    assert priority_offset_ms(PRIORITY, {"data": {"p": math.nan}}) == 0


# -------------------------------------------------------------------------------------- keys

KEY = compile_expression("event.data.userId")


def key_event(value: Any) -> dict[str, Any]:
    return {"name": "crm/contact.updated", "id": "01EVENTID", "data": {"userId": value}}


@given(value=st.text(max_size=20))
def test_key_strings_are_used_as_they_are(value: str) -> None:
    assert evaluate_key(KEY, key_event(value), option="throttle") == value


@given(value=st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
       | st.booleans())
def test_key_numbers_are_their_json_text(value: float) -> None:
    assert evaluate_key(KEY, key_event(value), option="throttle") == json.dumps(value)


def test_key_integer_and_float_stay_distinct_values() -> None:
    assert evaluate_key(KEY, key_event(7), option="throttle") == "7"
    assert evaluate_key(KEY, key_event(7.5), option="throttle") == "7.5"
    assert evaluate_key(None, key_event(7), option="throttle") == ""


@given(value=st.none() | st.lists(st.integers(), max_size=3)
       | st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
       option=st.sampled_from(["concurrency", "throttle", "rate_limit", "debounce", "batch",
                               "singleton", "idempotency"]))
def test_key_rejects_null_lists_and_maps_naming_expression_and_event(value: Any,
                                                                    option: str) -> None:
    with pytest.raises(FlowKeyError) as info:
        evaluate_key(KEY, key_event(value), option=option)
    message = str(info.value)
    assert message.startswith(f"{option} key 'event.data.userId'")
    assert "crm/contact.updated" in message and "01EVENTID" in message
    assert "must be a string or a number" in message


def test_key_missing_field_is_an_error_naming_expression_and_event() -> None:
    event = {"name": "crm/contact.updated", "id": "01EVENTID", "data": {}}
    with pytest.raises(FlowKeyError, match=r"rate_limit key 'event\.data\.userId' failed for "
                                           r"event 'crm/contact\.updated' \(01EVENTID\)"):
        evaluate_key(KEY, event, option="rate_limit")


# ------------------------------------------------------- end to end: concurrency per key


async def _until(condition: Callable[[], bool], what: Callable[[], str], seconds: float = 10
                 ) -> None:
    """Poll a predicate with a real-time deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting: {what()}")
        await asyncio.sleep(0.002)


async def _concurrency_scenario(limit: int, ops: list[tuple[str, Any]]) -> None:
    """Ops: ("send", [keys]) sends one event per key in ONE call; ("release", i) lets one of the
    executing steps finish. After each op, waits until every key runs exactly
    min(limit, outstanding) steps, so a run starting beyond the limit is always seen."""
    running: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    done: Counter[str] = Counter()
    started: list[tuple[str, int]] = []
    finished: set[int] = set()
    gates: defaultdict[int, asyncio.Event] = defaultdict(asyncio.Event)
    opened = False

    async def work(key: str, n: int) -> None:
        running[key] += 1
        peak[key] = max(peak[key], running[key])
        started.append((key, n))
        if not opened:
            await gates[n].wait()
        running[key] -= 1
        done[key] += 1
        finished.add(n)

    app = stepwell.App("p")

    @app.function(id="c", trigger="p/go",
                  concurrency={"limit": limit, "key": "event.data.key"})
    async def c(ctx: stepwell.Context, step: stepwell.Step) -> int:
        await step.run("work", work, ctx.event.data["key"], ctx.event.data["n"])
        return int(ctx.event.data["n"])

    sent: list[tuple[str, int]] = []

    def settled() -> bool:
        wanted = Counter(k for k, _ in sent)
        return all(running[k] == min(limit, wanted[k] - done[k]) for k in wanted)

    def state() -> str:
        return f"limit={limit} ops={ops} sent={sent} started={started} running={dict(running)}"

    with tempfile.TemporaryDirectory() as tmp:
        clock = VirtualClock(start=EPOCH_2026)
        async with stepwell.Engine(app, db=f"sqlite:///{tmp}/p.db", clock=clock) as engine:
            batched_keys: set[str] = set()
            for op, arg in ops:
                if op == "send":
                    batch = [(key, len(sent) + i) for i, key in enumerate(arg)]
                    sent.extend(batch)
                    if len(batch) > 1:
                        batched_keys.update(arg)
                    await engine.send([{"name": "p/go", "data": {"key": k, "n": n}}
                                       for k, n in batch])
                else:
                    executing = [n for _, n in started if not gates[n].is_set()]
                    if not executing:
                        continue
                    chosen = executing[arg % len(executing)]
                    gates[chosen].set()
                    await _until(lambda chosen=chosen: chosen in finished, state)
                await _until(settled, state)
                assert all(count <= limit for count in peak.values()), state()
            opened = True
            for gate in list(gates.values()):
                gate.set()
            await _until(lambda: sum(done.values()) == len(sent), state)
            await engine.idle()
            runs = await engine.runs(function_id="c")
    assert all(count <= limit for count in peak.values()), state()
    assert sorted(n for _, n in started) == list(range(len(sent))), state()  # each exactly once
    assert sorted(r.output for r in runs) == list(range(len(sent)))
    assert {r.status for r in runs} <= {"completed"}
    # FIFO within a key. Events of one send() that all get a free slot at once start
    # concurrently, in no defined order, so keys sent several at a time are left out here;
    # test_concurrency_runs_one_send_of_events_in_order checks them under a saturated key.
    for key in {k for k, _ in sent} - batched_keys:
        assert [n for k, n in started if k == key] == [n for k, n in sent if k == key], state()


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(limit=st.integers(1, 3),
       ops=st.lists(st.tuples(st.just("send"), st.lists(st.sampled_from("abc"), min_size=1,
                                                        max_size=3))
                    | st.tuples(st.just("release"), st.integers(0, 10)),
                    min_size=1, max_size=12))
def test_concurrency_limit_per_key_holds_end_to_end(limit: int,
                                                    ops: list[tuple[str, Any]]) -> None:
    """At no time do more than `limit` runs of one key execute their step; all complete, each
    step exactly once."""
    assume(any(op == "send" for op, _ in ops))
    asyncio.run(_concurrency_scenario(limit, ops))


async def test_concurrency_runs_one_send_of_events_in_order(make_engine: Any,
                                                            clock: VirtualClock) -> None:
    """concurrency=1 and four events in one send(): FIFO says 0, 1, 2, 3 (regression: one
    claim batch used to count its undecided items as held, parking 0, 1, 2 and running 3)."""
    app = stepwell.App("t")
    order: list[int] = []

    @app.function(id="f", trigger="app/go", concurrency=1)
    async def f(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.run("s", lambda: order.append(ctx.event.data["n"]))

    async with make_engine(app) as engine:
        await engine.send([{"name": "app/go", "data": {"n": n}} for n in range(4)])
        await engine.idle()
    assert order == [0, 1, 2, 3]


async def test_priority_orders_one_send_of_events(make_engine: Any, clock: VirtualClock) -> None:
    app = stepwell.App("t")
    order: list[str] = []

    @app.function(id="p", trigger="app/p", concurrency=1,
                  priority={"run": "event.data.plan === 'enterprise' ? 100 : 0"})
    async def p(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.run("s", lambda: order.append(ctx.event.data["who"]))

    async with make_engine(app) as engine:
        await engine.send([{"name": "app/p", "data": {"who": who, "plan": plan}}
                           for who, plan in [("f1", "free"), ("e1", "enterprise"),
                                             ("f2", "free")]])
        await engine.idle()
    assert order == ["e1", "f1", "f2"]
