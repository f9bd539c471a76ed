"""`GET /metrics`: the service's metrics in Prometheus' text format (prometheus_client renders
them; a fresh registry per scrape, since the values come from the service, not from globals)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Snapshot(Collector):
    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def collect(self) -> Iterator[Metric]:
        v = self.values
        yield CounterMetricFamily("stepwell_events_received", "Events stored by this process.",
                                  value=v["events_received"])
        yield CounterMetricFamily("stepwell_runs_created", "Runs created by this process.",
                                  value=v["runs_created"])
        finished = CounterMetricFamily("stepwell_runs_finished",
                                       "Runs this process ended, by final status.",
                                       labels=["status"])
        for status, count in sorted(v["runs_finished"].items()):
            finished.add_metric([status], count)
        yield finished
        steps = CounterMetricFamily("stepwell_steps_committed",
                                    "Step results this process committed, by step kind.",
                                    labels=["kind"])
        for kind, count in sorted(v["steps_committed"].items()):
            steps.add_metric([kind], count)
        yield steps
        yield CounterMetricFamily("stepwell_step_attempts_failed",
                                  "Failed step attempts (each retry counts).",
                                  value=v["step_attempts_failed"])
        yield CounterMetricFamily("stepwell_sdk_calls",
                                  "Requests this process made to SDK apps.",
                                  value=v["sdk_calls"])
        yield CounterMetricFamily("stepwell_sdk_checkpoints",
                                  "Checkpoint requests from SDK apps this process applied.",
                                  value=v["sdk_checkpoints"])
        for name, text in (
                ("step_seconds", "How long `run` step bodies took (successful attempts)."),
                ("queue_wait_seconds", "How late due work was claimed by this process (runs "
                                       "its own events started at once are not counted).")):
            histogram = v[name]
            yield HistogramMetricFamily(f"stepwell_{name}", text,
                                        buckets=histogram.cumulative(),
                                        sum_value=histogram.total)
        yield GaugeMetricFamily("stepwell_sessions_active",
                                "Runs executing in this process now.", value=v["sessions_active"])
        yield GaugeMetricFamily("stepwell_runs_parked",
                                "Runs waiting in this process's memory for a near instant.",
                                value=v["runs_parked"])
        yield GaugeMetricFamily("stepwell_queue_ready",
                                "Queue items due and not taken by any worker (all processes).",
                                value=v["queue_ready"])
        yield GaugeMetricFamily("stepwell_queue_lag_seconds",
                                "How long the oldest ready item has waited for a worker.",
                                value=v["queue_lag_seconds"])


def render(values: dict[str, Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(values))
    return generate_latest(registry)
