"""Shared by the benchmark workers of every engine (stdlib only: imported from stepwell's venv
and from the peers' venv alike).

A worker is a fresh process that runs ONE workload on ONE engine and writes one JSON object.
Every engine records the same instants with the same clock (`time.perf_counter`, in the one
process that both sends and executes):

- `sent[i]`     just before the client call that submits item i (send an event / start a
                workflow / send a message or signal);
- `started[i]`  the first line of the function body, first execution only;
- `finished[i]` after the last step returned, in the function body;
- for timers, `before[i]` just before the sleep call (first execution) and `woke[i]` just after
  it returns: lag = woke - (before + sleep);
- for wakeup (a herd of sleepers all due at the same instant), `before[i]` / `woke[i]` are wall
  clock times (`time.time()`, the clock the due instant is given in): lag = woke - due;
- for waits, `waiting[i]` just before the wait call and `resumed[i]` just after it returns with
  the matching payload: latency = resumed - sent (of the matching event / message / signal).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

WORKLOADS = ("W1", "W3", "W10", "latency", "fanout", "timers", "wakeup", "waits", "memory")
# Step counts of the throughput workloads. `latency` is W1 sent by ONE sender (no queueing).
STEPS = {"W1": 1, "W3": 3, "W10": 10, "latency": 1}
FANOUT_FUNCTIONS = 10
TIMER_SLEEP_S = 1.0
MEMORY_SLEEP_S = 3600.0
SENDERS = 200        # concurrent client tasks, each awaiting its call before the next


def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..1)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = max(0, min(len(ordered) - 1, math.ceil(p * len(ordered)) - 1))
    return ordered[index]


def ms_summary(prefix: str, seconds: Iterable[float]) -> dict[str, float]:
    values = [s * 1000 for s in seconds]
    return {f"{prefix}_p50_ms": round(percentile(values, 0.50), 2),
            f"{prefix}_p99_ms": round(percentile(values, 0.99), 2),
            f"{prefix}_max_ms": round(max(values), 2) if values else float("nan")}


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM (peak RSS) of a process, in bytes (Linux)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def rss(pid: int | str = "self") -> int:
    return proc_status(pid).get("VmRSS", 0)


def settled_rss(pid: int | str = "self", samples: int = 5, interval: float = 0.2) -> int:
    """The median of a few samples after a full collection (RSS moves a little at rest)."""
    gc.collect()
    values = []
    for _ in range(samples):
        values.append(rss(pid))
        time.sleep(interval)
    return sorted(values)[len(values) // 2]


@dataclass
class Marks:
    """The instants a workload records, keyed by item."""

    sent: dict[Any, float] = field(default_factory=dict)
    started: dict[Any, float] = field(default_factory=dict)
    finished: dict[Any, float] = field(default_factory=dict)
    before: dict[Any, float] = field(default_factory=dict)
    woke: dict[Any, float] = field(default_factory=dict)
    waiting: dict[Any, float] = field(default_factory=dict)
    resumed: dict[Any, float] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)
    count: int = 0          # memory workload: a bare counter, so the marks weigh nothing

    def start(self, key: Any) -> None:
        self.started.setdefault(key, time.perf_counter())

    def finish(self, key: Any) -> None:
        self.finished[key] = time.perf_counter()


MARKS = Marks()


async def drive(n: int, call: Callable[[int], Awaitable[Any]], senders: int = SENDERS,
                record: bool = True) -> float:
    """Submit items 0..n-1 from `senders` concurrent tasks (recording `MARKS.sent[i]` unless
    `record` is false); return the first send's instant."""
    sent = MARKS.sent
    queue = list(range(n - 1, -1, -1))
    first = time.perf_counter()

    async def sender() -> None:
        while queue:
            i = queue.pop()
            if record:
                sent[i] = time.perf_counter()
            await call(i)

    await asyncio.gather(*(sender() for _ in range(min(senders, n))))
    return first


async def until(predicate: Callable[[], bool], timeout: float, what: str,
                interval: float = 0.002) -> None:
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


def throughput_result(n_runs: int, steps: int, first: float) -> dict[str, Any]:
    m = MARKS
    last = max(m.finished.values())
    elapsed = last - first
    keys = list(m.finished)
    out: dict[str, Any] = {
        "runs": n_runs, "steps_per_run": steps, "seconds": round(elapsed, 3),
        "runs_per_s": round(n_runs / elapsed, 1),
        "steps_per_s": round(n_runs * steps / elapsed, 1),
    }
    out.update(ms_summary("start", [(m.started[k] - m.sent[k]) for k in keys]))
    out.update(ms_summary("finish", [(m.finished[k] - m.sent[k]) for k in keys]))
    return out


def fanout_result(n_events: int, first: float) -> dict[str, Any]:
    """Keys of `started`/`finished` are (event, function); `sent` is per event."""
    m = MARKS
    last = max(m.finished.values())
    elapsed = last - first
    runs = len(m.finished)
    per_event: dict[int, float] = {}
    for (i, _k), t in m.finished.items():
        per_event[i] = max(per_event.get(i, 0.0), t)
    out: dict[str, Any] = {
        "events": n_events, "runs": runs, "seconds": round(elapsed, 3),
        "events_per_s": round(n_events / elapsed, 1),
        "runs_per_s": round(runs / elapsed, 1),
    }
    out.update(ms_summary("start", [(t - m.sent[i]) for (i, _k), t in m.started.items()]))
    out.update(ms_summary("all_done", [(t - m.sent[i]) for i, t in per_event.items()]))
    return out


def timers_result(n: int, first: float, sleep_s: float) -> dict[str, Any]:
    m = MARKS
    lags = [m.woke[i] - (m.before[i] + sleep_s) for i in m.woke]
    out: dict[str, Any] = {
        "runs": n, "sleep_s": sleep_s,
        "seconds": round(max(m.woke.values()) - first, 3),
        "create_per_s": round(n / (max(m.before.values()) - first), 1),
        "early_wakes": sum(1 for x in lags if x < -0.001),
    }
    out.update(ms_summary("lag", lags))
    return out


def wakeup_margin(args: argparse.Namespace) -> float:
    """Seconds from the first start to the common due instant (chosen by run.py so that every
    run is asleep before it; checked)."""
    return float(options(args).get("margin", "10"))


def wakeup_result(n: int, due: float) -> dict[str, Any]:
    m = MARKS
    lags = [m.woke[i] - due for i in m.woke]
    last_asleep = max(m.before.values())
    out: dict[str, Any] = {
        "runs": n, "asleep_s_before_due": round(due - last_asleep, 3),
        "early_wakes": sum(1 for x in lags if x < -0.001),
    }
    out.update(ms_summary("lag", lags))
    out["lag_min_ms"] = round(min(lags) * 1000, 2)
    if last_asleep >= due:
        m.bad.append(f"the last run fell asleep {last_asleep - due:.1f}s after the due instant: "
                     "raise the margin")
    return out


def waits_result(n: int, first_start: float, first_send: float) -> dict[str, Any]:
    m = MARKS
    lat = [m.resumed[i] - m.sent[i] for i in m.resumed]
    last = max(m.resumed.values())
    out: dict[str, Any] = {
        "runs": n,
        "wait_setup_s": round(max(m.waiting.values()) - first_start, 3),
        "seconds": round(last - first_send, 3),
        "matches_per_s": round(n / (last - first_send), 1),
    }
    out.update(ms_summary("match", lat))
    return out


def memory_result(n: int, baseline: int, sleeping: int, peak: int,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "runs": n, "baseline_rss_mib": round(baseline / 2**20, 1),
        "sleeping_rss_mib": round(sleeping / 2**20, 1), "peak_rss_mib": round(peak / 2**20, 1),
        "bytes_per_run": round((sleeping - baseline) / n),
        "peak_bytes_per_run": round((peak - baseline) / n),
    }
    out.update(extra or {})
    return out


def worker_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workload", required=True, choices=WORKLOADS)
    parser.add_argument("-n", type=int, required=True,
                        help="runs (events for fan-out; sleeping runs for memory)")
    parser.add_argument("--senders", type=int, default=SENDERS)
    parser.add_argument("--dir", required=True, help="scratch directory for databases")
    parser.add_argument("--out", required=True, help="write the JSON result here")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--option", action="append", default=[],
                        help="engine-specific KEY=VALUE (repeatable)")
    return parser.parse_args()


def options(args: argparse.Namespace) -> dict[str, str]:
    return dict(item.split("=", 1) for item in args.option)


def write_result(path: str, result: dict[str, Any]) -> None:
    result.setdefault("pid", os.getpid())
    result.setdefault("python", sys.version.split()[0])
    with open(path, "w") as fh:
        json.dump(result, fh, indent=2)
