"""Errors users raise or catch inside handlers."""

from __future__ import annotations

import datetime
from typing import Any

from stepwell.core.durations import parse_duration_ms, parse_timestamp_ms


class NonRetriableError(Exception):
    """Fail the step (or the run, raised outside a step) now, with no further retries."""


class RetryAfterError(Exception):
    """Retry, but not before `retry_after`: a duration ("30s", seconds, timedelta) or a time
    (aware datetime, ISO string)."""

    def __init__(self, message: str,
                 retry_after: str | int | float | datetime.timedelta | datetime.datetime) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def due_at(self, now_ms: int) -> int:
        """When the next attempt may start."""
        value = self.retry_after
        if isinstance(value, datetime.datetime):
            return parse_timestamp_ms(value, what="retry_after")
        if isinstance(value, str) and value[:1].isdigit() and ("T" in value or "-" in value):
            return parse_timestamp_ms(value, what="retry_after")
        return now_ms + parse_duration_ms(value, what="retry_after")


class StepError(Exception):
    """A step failed for good (retries exhausted, non-retriable, or an invoked run failed).

    Raised inside the handler at the step's call, so it can be caught to compensate.
    """

    def __init__(self, step_id: str, error: dict[str, Any]) -> None:
        self.step_id = step_id
        self.error = error
        self.name = str(error.get("name", "Error"))
        self.stack = str(error.get("stack", ""))
        super().__init__(f"step '{step_id}' failed: {self.name}: {error.get('message', '')}")


class NonDeterminismError(NonRetriableError):
    """The handler reached steps in a way that contradicts the recorded history."""


class InvalidStepError(NonRetriableError):
    """A step was called with invalid arguments (a programming error: retrying cannot help)."""
