"""The lines a person watching the terminal needs: failed attempts and runs that did not
complete, each naming the run, the function, the step, the attempt and what happens next.

Every line carries the same facts as structured fields (`run_id`, `function_id`, `step_id`,
`attempt`, `next_attempt_at`) for the JSON log format, so machines need not parse the text.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

log = logging.getLogger("stepwell.run")


def _when(ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _in(delta_ms: int) -> str:
    seconds = max(0, delta_ms) / 1000
    if seconds < 90:
        return f"{seconds:.3g} s"
    if seconds < 5400:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def error_text(error: dict[str, Any] | None) -> str:
    if not error:
        return "unknown error"
    name = error.get("name") or "Error"
    message = error.get("message")
    return f"{name}: {message}" if message else str(name)


def attempt_failed(run_id: str, function_id: str, step_id: str, attempt: int, retries: int,
                   error: dict[str, Any], *, now: int, next_at: int | None) -> None:
    """`attempt` is 0-based; `next_at` None means no attempt follows (retries used up, or the
    error is not retriable)."""
    total = retries + 1
    where = "outside steps" if step_id.startswith("__function__") else f"step '{step_id}'"
    extra = {"run_id": run_id, "function_id": function_id, "step_id": step_id,
             "attempt": attempt + 1, "max_attempts": total,
             "next_attempt_at": None if next_at is None else _when(next_at)}
    if next_at is None:
        log.error("run %s %s: %s failed on attempt %d of %d, no retry: %s", run_id,
                  function_id, where, attempt + 1, total, error_text(error), extra=extra)
    else:
        log.warning("run %s %s: %s failed on attempt %d of %d: %s; next attempt at %s (in %s)",
                    run_id, function_id, where, attempt + 1, total, error_text(error),
                    _when(next_at), _in(next_at - now), extra=extra)


def run_ended(run_id: str, function_id: str, status: str, error: dict[str, Any] | None) -> None:
    """A run that ended other than completed: failed (ERROR) or cancelled / timed out
    (WARNING, with the reason)."""
    extra = {"run_id": run_id, "function_id": function_id, "status": status}
    if status == "failed":
        log.error("run %s %s failed: %s", run_id, function_id, error_text(error), extra=extra)
    elif status == "cancelled":
        reason = (error or {}).get("message") or "cancelled"
        log.warning("run %s %s cancelled: %s", run_id, function_id, reason, extra=extra)
