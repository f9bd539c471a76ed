"""What a handler receives besides `step`: the event(s), ids, attempt, logger, failure info."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic

from stepwell.core.models import D, Event

# The attempt of the step currently executing, set by the runtime around the step's callable.
current_attempt: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "stepwell_attempt", default=None)
# The id of the step currently executing (for `ctx.logger` lines), set alongside it.
current_step: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "stepwell_step", default=None)

# Signs a token with the server's secret (`claims`, ttl in seconds) for the run executing now,
# set by the runtime around the handler: how integrations make approval URLs the server honours.
current_signer: contextvars.ContextVar[
    Callable[[dict[str, Any], float], Awaitable[str]] | None] = contextvars.ContextVar(
    "stepwell_signer", default=None)


@dataclass(frozen=True, slots=True)
class FailureInfo:
    """`ctx.error` in an `on_failure` handler."""

    name: str
    message: str
    stack: str = ""


class ReplayAwareLogger:
    """`ctx.logger`: logs once per real execution, stays quiet while replaying memoized steps.
    Every record carries `run_id` and `function_id` (and `step_id` inside a step), which the
    CLI's log formats print."""

    def __init__(self, logger: logging.Logger, replaying: Callable[[], bool],
                 extra: dict[str, Any]) -> None:
        self._logger = logger
        self._replaying = replaying
        self._extra = extra

    def _log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self._replaying():
            return
        step_id = current_step.get()
        kwargs.setdefault("extra", self._extra if step_id is None
                          else {**self._extra, "step_id": step_id})
        kwargs.setdefault("stacklevel", 3)
        self._logger.log(level, msg, *args, **kwargs)

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._log(logging.DEBUG, msg, *args, **kwargs)

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._log(logging.WARNING, msg, *args, **kwargs)

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._log(logging.ERROR, msg, *args, **kwargs)

    def exception(self, msg: object, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("exc_info", True)
        self._log(logging.ERROR, msg, *args, **kwargs)


class Context(Generic[D]):
    """The run as the handler sees it.

    `event` is the triggering event (the first of a batch), `events` all of them (a batch);
    `run_id` and `function_id` name the run; `logger` logs once per real execution, not again
    when the handler replays; `attempt` is the 0-based attempt of the current step. In an
    `on_failure` handler, `error` holds the failure (`name`, `message`, `stack`) and `event` is
    the original triggering event.

    `cancelled` turns True when the run is cancelled while this execution is running (see
    `Context.cancelled`).

    `Context[Model]` types `ctx.event.data` as `Model` when the function's trigger is declared
    `Event[Model]("name")` (the data is rebuilt as one).
    """

    def __init__(self, *, event: Event[D], events: list[Event], run_id: str, function_id: str,
                 logger: ReplayAwareLogger, function_attempt: Callable[[], int],
                 error: FailureInfo | None = None,
                 cancelled: Callable[[], bool] = lambda: False) -> None:
        self.event: Event[D] = event
        self.events = events
        self.run_id = run_id
        self.function_id = function_id
        self.logger = logger
        self.error = error
        self._function_attempt = function_attempt
        self._cancelled = cancelled

    @property
    def attempt(self) -> int:
        """0-based attempt of the step now executing, or, outside steps, of the current unit of
        work (the code after the last recorded step: each new unit starts again at 0)."""
        step_attempt = current_attempt.get()
        return self._function_attempt() if step_attempt is None else step_attempt

    @property
    def cancelled(self) -> bool:
        """True once the run has been cancelled while a step body of this execution runs, for
        long steps to stop early: a plain `def` body polls it (an `async def` body also gets
        `asyncio.CancelledError` at its next `await`). Whatever the step returns afterwards
        is not recorded. Seen within a moment when the cancellation is committed in this
        process, within about a second from another process."""
        return self._cancelled()

    def __repr__(self) -> str:
        return f"Context(run_id={self.run_id!r}, function_id={self.function_id!r})"
