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
        yield from _per_function(v)
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


def _per_function(v: dict[str, Any]) -> Iterator[Metric]:
    """What operators watch per function: throughput, step latency and the backlog (also per
    concurrency key: the busiest keys by name, the rest as "other")."""
    started = CounterMetricFamily("stepwell_function_runs_started",
                                  "Runs this process started, by function.",
                                  labels=["function"])
    for function_id, count in sorted(v["runs_started"].items()):
        started.add_metric([function_id], count)
    yield started
    finished = CounterMetricFamily("stepwell_function_runs_finished",
                                   "Runs this process ended, by function and final status.",
                                   labels=["function", "status"])
    for (function_id, status), count in sorted(v["function_runs_finished"].items()):
        finished.add_metric([function_id, status], count)
    yield finished
    steps = HistogramMetricFamily("stepwell_function_step_seconds",
                                  "How long `run` step bodies took, by function.",
                                  labels=["function"])
    for function_id, histogram in sorted(v["function_step_seconds"].items()):
        steps.add_metric([function_id], histogram.cumulative(), histogram.total)
    yield steps
    tokens = CounterMetricFamily(
        "stepwell_function_model_tokens",
        "Tokens steps of this process spent on models, by function, model and direction "
        "(input or output; the 20 first models of a function by name, the rest as \"other\").",
        labels=["function", "model", "direction"])
    calls = CounterMetricFamily("stepwell_function_model_requests",
                                "Model requests steps of this process made, by function and "
                                "model.", labels=["function", "model"])
    for (function_id, model, direction), count in sorted(v.get("model_tokens", {}).items()):
        if direction == "calls":
            calls.add_metric([function_id, model], count)
        else:
            tokens.add_metric([function_id, model, direction], count)
    yield tokens
    yield calls
    for labels, values, name, what in (
            (["function"], v["backlog"], "stepwell_function_backlog", "function"),
            (["function", "key"], v["concurrency_backlog"], "stepwell_concurrency_backlog",
             "function and concurrency key (the busiest keys; the rest as key=\"other\")")):
        count = GaugeMetricFamily(name, f"Runs due and waiting for a worker or a concurrency "
                                        f"slot (all processes), by {what}.", labels=labels)
        oldest = GaugeMetricFamily(f"{name}_oldest_seconds",
                                   f"How long the oldest of those has waited, by {what}.",
                                   labels=labels)
        for key, backlog in sorted(values.items()):
            label_values = [key] if isinstance(key, str) else list(key)
            count.add_metric(label_values, backlog.count)
            oldest.add_metric(label_values, backlog.oldest_seconds)
        yield count
        yield oldest


def render(values: dict[str, Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(values))
    return generate_latest(registry)
