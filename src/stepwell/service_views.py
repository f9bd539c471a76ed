"""How the service shows domain objects: runs, steps, events, triggers and function options as
JSON-ready dicts, in the shapes of Inngest's REST API v1 (plus stepwell's own fields)."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, Final

from stepwell.core import jsonsafe
from stepwell.core.config import CancelRule, CronTrigger, EventTrigger, FunctionSpec, Trigger
from stepwell.core.durations import format_duration
from stepwell.core.expressions import Expression, match_expression
from stepwell.core.models import Event, Run, RunStatus, StepInfo
from stepwell.store.base import HeldWindow

# Inngest's run statuses, plus the two stepwell has that Inngest folds into others.
STATUS_NAMES: Final[dict[RunStatus, str]] = {
    "queued": "Queued", "running": "Running", "completed": "Completed", "failed": "Failed",
    "cancelled": "Cancelled", "skipped": "Skipped",
}


def iso(ms: int | None) -> str | None:
    """Epoch ms as Inngest writes times: RFC 3339 in UTC with milliseconds."""
    if ms is None:
        return None
    try:
        moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):    # a row no valid input could have written
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def step_dict(step: StepInfo) -> dict[str, Any]:
    out = asdict(step)
    out["started_at"] = iso(step.started_at) if step.started_at else None
    out["ended_at"] = iso(step.ended_at)
    return out


# What a running run is doing, derived from its steps (`runs list --status sleeping`).
ACTIVITIES: Final = ("sleeping", "waiting", "invoking", "retrying")


def activity(run: Run) -> str | None:
    """`sleeping`, `waiting` (for an event or a signal), `invoking` (waiting for a child run)
    or `retrying` (a step in backoff) for a running run whose steps say so; None otherwise."""
    if run.status != "running":
        return None
    current = {step.status for step in run.steps}
    return next((state for state in ACTIVITIES if state in current), None)


# An unfinished run of a function no longer defined (renamed or deleted): a worker that claimed
# it marked it with the warning `runtime.items.orphan_warning` starts with.
ORPHANED: Final = "orphaned"
ORPHAN_MARK: Final = "orphaned:"
# Every derived filter of `runs list --status` / `GET /v1/runs?status=`.
DERIVED_STATUSES: Final = (*ACTIVITIES, ORPHANED)


def is_orphaned(run: Run, defined: Callable[[str], bool]) -> bool:
    """Marked orphaned by a worker, not finished, and still of no function defined here (a run
    whose function came back keeps the warning, but resumes: it is not orphaned)."""
    return (not run.done and not defined(run.function_id)
            and any(w.startswith(ORPHAN_MARK) for w in run.warnings))


def run_dict(run: Run, *, steps: bool = True, public_id: str | None = None) -> dict[str, Any]:
    """Inngest's v1 run shape first, then what stepwell adds (timeline, error, warnings).

    Inngest's `run_started_at` is when the run was created (queued), so ours is too; the moment
    a worker first picked it up is the extra `started_at`. A failed run's `output` is its error,
    as in Inngest, so a client reading only `output` still sees why.
    """
    app_id, _, fn_id = run.function_id.partition("/")
    output = run.output
    if output is None and run.status == "failed":
        output = run.error
    out: dict[str, Any] = {
        "run_id": run.id,
        "run_started_at": iso(run.created_at),
        "ended_at": iso(run.ended_at),
        "status": STATUS_NAMES[run.status],
        "output": output,
        "event_id": run.event_id,
        "function_id": public_id or run.function_id,
        "app_id": app_id if fn_id else None,
        "started_at": iso(run.started_at),
        "error": run.error,
        "warnings": list(run.warnings),
        "event_ids": list(run.event_ids),
        "parent_run_id": run.parent_run_id,
        "replay_of": run.replay_of,
        "version": run.version,
    }
    if steps:
        out["steps"] = [step_dict(s) for s in run.steps]
        out["activity"] = activity(run)
    return _degraded(out, "output", "error", "steps")


def _degraded(out: dict[str, Any], *fields: str) -> dict[str, Any]:
    """Defence in depth for rows stored by older versions, which accepted what ingest now
    refuses (`1e400`, lone surrogates): such values are shown repaired, and the row says what
    was changed in `degraded`, so one bad row never fails a whole listing."""
    problems: list[str] = []
    for name in fields:
        if name in out:
            out[name], found = jsonsafe.repair(out[name], name)
            problems += found
    if problems:
        out["degraded"] = problems
    return out


def event_dict(event: Event, received_at: int | None = None) -> dict[str, Any]:
    """Inngest's v1 event shape (`internal_id`, `receivedAt` and the event itself)."""
    return _degraded({"internal_id": event.id, "id": event.id, "name": event.name,
                      "data": event.data, "user": event.user, "ts": event.ts,
                      "receivedAt": iso(received_at if received_at is not None else event.ts)},
                     "name", "data", "user", "id", "internal_id")


def trigger_dict(trigger: Trigger) -> dict[str, Any]:
    """A trigger as Inngest's function config writes it (`event`+`expression`, or `cron`)."""
    if isinstance(trigger, CronTrigger):
        return {"cron": trigger.source}
    assert isinstance(trigger, EventTrigger)
    out: dict[str, Any] = {"event": trigger.name}
    if trigger.condition is not None:
        out["expression"] = trigger.condition.source
    return out


def _source(expression: Expression | None) -> str | None:
    return None if expression is None else expression.source


def _duration(ms: int | None) -> str | None:
    return None if ms is None else format_duration(ms)


def _present(values: dict[str, Any]) -> dict[str, Any]:
    """Only the settings that are set, so the dashboard shows what the user configured."""
    return {k: v for k, v in values.items() if v is not None}


def _cancel_if(rule: CancelRule) -> str | None:
    """A cancel rule's own `if_`: its condition is `<match> && (<if_>)` (see core.config), so
    the match part, already shown as `match`, is taken off again."""
    source = _source(rule.condition)
    if source is None or rule.match_path is None:
        return source
    matched = match_expression(rule.match_path)
    if source == matched:
        return None
    prefix = f"{matched} && ("
    return source[len(prefix):-1] if source.startswith(prefix) and source.endswith(")") \
        else source


def function_config(spec: FunctionSpec) -> dict[str, Any]:
    """A function's flow-control, cancellation and timeout options, in `@app.function`'s
    snake_case names with durations and expressions written back as text (`"1m"`,
    `"event.data.userId"`); options left unset are absent."""
    out: dict[str, Any] = {}
    if spec.concurrency:
        out["concurrency"] = [_present({"limit": c.limit, "key": _source(c.key),
                                        "scope": c.scope}) for c in spec.concurrency]
    if spec.throttle is not None:
        t = spec.throttle
        out["throttle"] = _present({"limit": t.limit, "period": _duration(t.period_ms),
                                    "burst": t.burst, "key": _source(t.key)})
    if spec.rate_limit is not None:
        r = spec.rate_limit
        out["rate_limit"] = _present({"limit": r.limit, "period": _duration(r.period_ms),
                                      "key": _source(r.key)})
    if spec.debounce is not None:
        d = spec.debounce
        out["debounce"] = _present({"period": _duration(d.period_ms), "key": _source(d.key),
                                    "timeout": _duration(d.timeout_ms)})
    if spec.batch is not None:
        b = spec.batch
        out["batch"] = _present({"max_size": b.max_size, "timeout": _duration(b.timeout_ms),
                                 "key": _source(b.key), "if": _source(b.condition)})
    if spec.priority is not None:
        out["priority"] = {"run": spec.priority.source}
    if spec.idempotency is not None:
        out["idempotency"] = spec.idempotency.source
    if spec.singleton is not None:
        out["singleton"] = _present({"key": _source(spec.singleton.key),
                                     "mode": spec.singleton.mode})
    if spec.cancel_on:
        out["cancel_on"] = [_present({"event": c.event, "match": c.match_path,
                                      "if": _cancel_if(c), "timeout": _duration(c.timeout_ms)})
                            for c in spec.cancel_on]
    timeouts = _present({"start": _duration(spec.timeout_start_ms),
                         "finish": _duration(spec.timeout_finish_ms)})
    if timeouts:
        out["timeouts"] = timeouts
    return out


def usage_dict(rows: Sequence[Any]) -> dict[str, Any]:
    """A run's model usage (`Tx.run_model_usage` rows: one per step attempt and model) as the
    run view shows it: totals, then per model (most tokens first). Failed attempts count:
    their tokens were spent."""
    models: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = models.setdefault(row.model, {"model": row.model, "input_tokens": 0,
                                               "output_tokens": 0, "requests": 0})
        entry["input_tokens"] += row.input_tokens
        entry["output_tokens"] += row.output_tokens
        entry["requests"] += row.calls
    ranked = sorted(models.values(),
                    key=lambda m: (-(m["input_tokens"] + m["output_tokens"]), m["model"]))
    return {"input_tokens": sum(m["input_tokens"] for m in ranked),
            "output_tokens": sum(m["output_tokens"] for m in ranked),
            "requests": sum(m["requests"] for m in ranked),
            "models": ranked}


def held_dict(window: HeldWindow) -> dict[str, Any]:
    """A pending batch or debounce window (`Tx.held_windows`): events flow control holds back
    before any run exists. `fires_at` is when it starts its run (a batch: sooner if it fills),
    `key` the evaluated key ("" for an option without one), `events` how many it holds and
    `event_id` the one a debounce will run with (a batch: its oldest)."""
    return {"kind": window.kind, "key": window.key, "fires_at": iso(window.due_at),
            "created_at": iso(window.created_at), "events": window.events,
            "event_id": window.event_id}
