"""The step API handlers use: `step.run`, `step.sleep`, `step.wait_for_event`, ...

`Step` only validates arguments and packs them into a request; the runtime's driver decides
whether the step is memoized, must execute, or suspends the run. Sync handlers get a `SyncStep`,
a thin blocking wrapper over the same `Step` (so there is one implementation of each step).
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol, TypeVar, cast, overload

from stepwell.core.config import MAX_SLEEP_MS
from stepwell.core.durations import DurationError, parse_duration_ms, parse_timestamp_ms
from stepwell.core.expressions import (
    Expression,
    ExpressionError,
    compile_expression,
    match_expression,
)
from stepwell.core.models import D, Event, InvalidEventError, normalize_send
from stepwell.core.streams import StreamNameError, check_name
from stepwell.sdk.errors import InvalidStepError
from stepwell.sdk.types import rebuild, return_type

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(slots=True)
class StepRequest:
    """What a step call asks of the runtime. `kind` picks which fields matter."""

    kind: str                                   # run | sleep | wait | send | invoke | patch
    step_id: str
    fn: Callable[..., Any] | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    sleep_ms: int | None = None                 # sleep: relative
    until_ms: int | None = None                 # sleep_until: absolute
    event_name: str = ""                        # wait
    signal: str | None = None                   # wait: for a named signal instead
    on_conflict: str = "fail"                   # wait for a signal
    match_path: str | None = None               # wait
    condition: Expression | None = None         # wait: remaining `if` condition
    timeout_ms: int | None = None               # wait / invoke
    events: list[dict[str, Any]] = field(default_factory=list)   # send
    function: Any = None                        # invoke: Function or id
    data: dict[str, Any] | None = None          # invoke
    deprecated: bool = False                    # patch: deprecate_patch (records nothing)


    @property
    def key(self) -> str:
        """What identifies the step in the run's history (hashed with its occurrence): its
        id, except that patches have their own namespace, so `patched("x")` and a step
        `"x"` never collide."""
        return f"patch:{self.step_id}" if self.kind == "patch" else self.step_id


class StepDriver(Protocol):
    async def perform(self, request: StepRequest) -> Any: ...

    async def publish(self, topic: str, data: Any, channel: str | None) -> int: ...


def _check_id(step_id: object) -> str:
    if not isinstance(step_id, str) or not step_id:
        raise InvalidStepError(f"a step id must be a non-empty string, got {step_id!r}")
    return step_id


def _duration(step_id: str, what: str, value: object) -> int:
    try:
        ms = parse_duration_ms(value, what=what)  # type: ignore[arg-type]
    except DurationError as exc:
        raise InvalidStepError(f"step '{step_id}': {exc}") from None
    if ms > MAX_SLEEP_MS:
        raise InvalidStepError(f"step '{step_id}': {what} is longer than a year (the maximum)")
    return ms


def normalize_events(step_id: str, events: object) -> list[dict[str, Any]]:
    """`send_event` accepts an Event, a dict or a list of these."""
    items = list(events) if isinstance(events, list | tuple) else [events]
    if not items:
        raise InvalidStepError(f"step '{step_id}': send_event needs at least one event")
    try:
        # The size is checked when the step runs (the driver's check), so an oversize event
        # fails that step, recorded, rather than the function's code.
        _, normalized = normalize_send((items,), limit_size=False)
        for item in items:
            if isinstance(item, Event) and item.schema is not None:
                check_event_data(item.schema, item.name, item.data)
    except InvalidEventError as exc:
        raise InvalidStepError(f"step '{step_id}': {exc}") from None
    return [e.to_dict() for e in normalized]


def check_event_data(schema: Any, name: str, data: Any) -> Any:
    """Event data validated against its declared model (InvalidEventError naming the field)."""
    from stepwell.sdk.types import DataMismatchError

    try:
        return rebuild(schema, data, what=f"event '{name}' data")
    except DataMismatchError as exc:
        raise InvalidEventError(str(exc)) from None


M = TypeVar("M", bound=Callable[..., Coroutine[Any, Any, Any]])


def _tracked(method: M) -> M:
    """Remember each step call's coroutine, so a call that is never awaited (a forgotten
    `await`) can be reported by name when the handler returns (`Step.never_awaited`)."""

    @functools.wraps(method)
    def call(self: Step, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        coro = method(self, *args, **kwargs)
        calls = self._calls
        if len(calls) >= 64:          # keep only the ones not yet started
            calls[:] = [c for c in calls
                        if inspect.getcoroutinestate(c) == inspect.CORO_CREATED]
        calls.append(coro)
        return coro

    return cast(M, call)


class Step:
    """Async step API (for `async def` handlers)."""

    def __init__(self, driver: StepDriver) -> None:
        self._driver = driver
        self._calls: list[Coroutine[Any, Any, Any]] = []

    def never_awaited(self) -> list[str]:
        """The ids of step calls made but never awaited (nor handed to `asyncio.gather` or a
        task); each is closed, so Python does not also warn about it."""
        missed = []
        for coro in self._calls:
            if inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
                frame = getattr(coro, "cr_frame", None)
                missed.append(str(frame.f_locals.get("step_id", "?")) if frame else "?")
                coro.close()
        self._calls.clear()
        return missed

    async def publish(self, topic: str, data: Any, *, channel: str | None = None) -> int:
        """Append `data` (JSON) to a durable stream and return its offset there: the run's
        own channel (`run:<run id>`) unless `channel` names another (e.g. `user:42`).
        Subscribers (`GET /v1/streams/{channel}`, `Client.subscribe`) see it at once.

        In the handler a publish happens once, even on replay. Inside a step body it is live
        (token-by-token output) and belongs to that attempt: if the attempt fails, a
        `stepwell/retracted` marker follows, telling subscribers to drop what it published
        (docs: guides/streams.md)."""
        try:
            check_name("topic", topic)
            if channel is not None:
                check_name("channel", channel)
        except StreamNameError as exc:
            raise InvalidStepError(str(exc)) from None
        return await self._driver.publish(topic, data, channel)

    @overload
    async def run(self, step_id: str, fn: Callable[..., Any], *args: Any,
                  output_type: type[T], **kwargs: Any) -> T: ...

    @overload
    async def run(self, step_id: str, fn: Callable[P, Awaitable[T]],
                  *args: P.args, **kwargs: P.kwargs) -> T: ...

    @overload
    async def run(self, step_id: str, fn: Callable[P, T], *args: P.args,
                  **kwargs: P.kwargs) -> T: ...

    @_tracked
    async def run(self, step_id: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` (sync or async) once; its JSON result is memoized.

        The result comes back as the type `fn` returns, on the first run and on replay: a
        Pydantic model or dataclass (also inside `list[...]` etc.) named by `fn`'s return
        annotation, or by `output_type=` (which is not passed on to `fn`), is rebuilt from
        the stored JSON; other values come back as their JSON."""
        _check_id(step_id)
        if not callable(fn):
            raise InvalidStepError(f"step '{step_id}': fn must be callable, got {fn!r}")
        output_type = kwargs.pop("output_type", None)
        data = await self._driver.perform(
            StepRequest("run", step_id, fn=fn, args=args, kwargs=kwargs))
        target = output_type if output_type is not None else return_type(fn)
        if target is None:
            return data
        return rebuild(target, data, what=f"the result of step '{step_id}'")

    @_tracked
    async def sleep(self, step_id: str, duration: str | int | float | datetime.timedelta) -> None:
        """Durable sleep (up to a year)."""
        ms = _duration(_check_id(step_id), "sleep duration", duration)
        await self._driver.perform(StepRequest("sleep", step_id, sleep_ms=ms))

    @_tracked
    async def sleep_until(self, step_id: str, when: datetime.datetime | str | int | float) -> None:
        """Durable sleep until an aware datetime, ISO-8601 string or epoch milliseconds."""
        _check_id(step_id)
        try:
            until = parse_timestamp_ms(when, what="sleep_until time")
        except DurationError as exc:
            raise InvalidStepError(f"step '{step_id}': {exc}") from None
        await self._driver.perform(StepRequest("sleep", step_id, until_ms=until))

    @overload
    async def wait_for_event(self, step_id: str, *, event: Event[D],
                             timeout: str | int | float | datetime.timedelta,
                             match: str | None = None, if_: str | None = None
                             ) -> Event[D] | None: ...

    @overload
    async def wait_for_event(self, step_id: str, *, event: str,
                             timeout: str | int | float | datetime.timedelta,
                             match: str | None = None, if_: str | None = None
                             ) -> Event | None: ...

    @_tracked
    async def wait_for_event(self, step_id: str, *, event: str | Event[Any],
                             timeout: str | int | float | datetime.timedelta,
                             match: str | None = None, if_: str | None = None
                             ) -> Event[Any] | None:
        """The first matching event after this step is reached, or None on timeout. With a
        declared event (`event=Event[Model]("name")`) its data comes back as a `Model`
        (DataMismatchError, naming the field, if it does not fit)."""
        _check_id(step_id)
        schema = event.schema if isinstance(event, Event) else None
        event = event.name if isinstance(event, Event) else event
        if not isinstance(event, str) or not event:
            raise InvalidStepError(f"step '{step_id}': event must be a non-empty event name")
        ms = _duration(step_id, "timeout", timeout)
        condition = None
        try:
            if match is not None:
                match_expression(match)
            if if_ is not None:
                condition = compile_expression(if_)
        except ExpressionError as exc:
            raise InvalidStepError(f"step '{step_id}': {exc}") from None
        result = await self._driver.perform(StepRequest(
            "wait", step_id, event_name=event, match_path=match, condition=condition,
            timeout_ms=ms))
        if result is None:
            return None
        received: Event[Any] = Event.from_dict(result)
        if schema is not None:
            received.data = rebuild(schema, received.data, what=f"event '{event}' data "
                                    f"(received by step '{step_id}')")
        return received

    @_tracked
    async def wait_for_signal(self, step_id: str, *, signal: str,
                              timeout: str | int | float | datetime.timedelta,
                              on_conflict: str = "fail") -> dict[str, Any] | None:
        """Wait until `signal` is sent (`engine.send_signal`, `POST /v1/signals`, or an SDK
        app's `step.sendSignal`): returns `{"signal": name, "data": data}`, or None on timeout.
        One wait holds a signal name at a time; if another run holds it, `on_conflict="fail"`
        fails this step (StepError) and `"replace"` takes the name over."""
        _check_id(step_id)
        if not isinstance(signal, str) or not signal:
            raise InvalidStepError(f"step '{step_id}': signal must be a non-empty name")
        if on_conflict not in ("fail", "replace"):
            raise InvalidStepError(f"step '{step_id}': on_conflict must be 'fail' or 'replace', "
                                   f"got {on_conflict!r}")
        ms = _duration(step_id, "timeout", timeout)
        result: dict[str, Any] | None = await self._driver.perform(StepRequest(
            "wait", step_id, signal=signal, on_conflict=on_conflict, timeout_ms=ms))
        return result

    @_tracked
    async def send_event(self, step_id: str, events: Event | dict[str, Any] | list[Any]
                         ) -> list[str]:
        """Send events (once, even on replay); returns their ids."""
        batch = normalize_events(_check_id(step_id), events)
        ids: list[str] = await self._driver.perform(StepRequest("send", step_id, events=batch))
        return ids

    @_tracked
    async def invoke(self, step_id: str, *, function: Any, data: dict[str, Any] | None = None,
                     timeout: str | int | float | datetime.timedelta | None = None) -> Any:
        """Run another function as a child run and return its output (StepError if it failed)."""
        _check_id(step_id)
        if data is not None and not isinstance(data, dict):
            raise InvalidStepError(f"step '{step_id}': invoke data must be an object")
        ms = None if timeout is None else _duration(step_id, "timeout", timeout)
        return await self._driver.perform(StepRequest(
            "invoke", step_id, function=function, data=data or {}, timeout_ms=ms))


    @_tracked
    async def patched(self, change_id: str) -> bool:
        """Whether this run takes the new branch of a code change (`if await
        step.patched("change-id"): new code else: old code`).

        A run that reaches this point for the first time while executing new code gets True;
        a run that had already gone past this point under the old code (its recorded steps
        continue after it) gets False, so it replays the old branch it took. The answer is
        recorded as the run's step `change_id` (kind `patch`), so every later replay, on any
        worker and after any restart, agrees. It takes no position in the step order: adding
        it does not shift the steps after it. Retire a change with `deprecate_patch` once no
        unfinished run took the old branch (`stepwell check` lists them)."""
        _check_id(change_id)
        answer: bool = await self._driver.perform(StepRequest("patch", change_id))
        return answer

    @_tracked
    async def deprecate_patch(self, change_id: str) -> None:
        """The second step of retiring `patched(change_id)`: the old branch is gone from the
        code and the new one is unconditional. Runs that recorded the patch replay cleanly;
        nothing new is recorded. Remove the call once `stepwell check` finds no unfinished run
        that recorded it."""
        _check_id(change_id)
        await self._driver.perform(StepRequest("patch", change_id, deprecated=True))


class SyncStep:
    """Blocking step API for plain `def` handlers, which run on a worker thread.

    Each call hands the same coroutine `Step` would run to the engine's loop and blocks on it.
    """

    def __init__(self, step: Step, loop: asyncio.AbstractEventLoop) -> None:
        self._step = step
        self._loop = loop

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @overload
    def run(self, step_id: str, fn: Callable[..., Any], *args: Any,
            output_type: type[T], **kwargs: Any) -> T: ...

    @overload
    def run(self, step_id: str, fn: Callable[P, T], *args: P.args,
            **kwargs: P.kwargs) -> T: ...

    def run(self, step_id: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._call(self._step.run(step_id, fn, *args, **kwargs))

    def sleep(self, step_id: str, duration: str | int | float | datetime.timedelta) -> None:
        self._call(self._step.sleep(step_id, duration))

    def sleep_until(self, step_id: str, when: datetime.datetime | str | int | float) -> None:
        self._call(self._step.sleep_until(step_id, when))

    @overload
    def wait_for_event(self, step_id: str, *, event: Event[D],
                       timeout: str | int | float | datetime.timedelta,
                       match: str | None = None, if_: str | None = None) -> Event[D] | None: ...

    @overload
    def wait_for_event(self, step_id: str, *, event: str,
                       timeout: str | int | float | datetime.timedelta,
                       match: str | None = None, if_: str | None = None) -> Event | None: ...

    def wait_for_event(self, step_id: str, *, event: str | Event[Any],
                       timeout: str | int | float | datetime.timedelta,
                       match: str | None = None, if_: str | None = None) -> Event[Any] | None:
        result: Event[Any] | None = self._call(self._step.wait_for_event(
            step_id, event=event, timeout=timeout, match=match, if_=if_))
        return result

    def send_event(self, step_id: str, events: Event | dict[str, Any] | list[Any]) -> list[str]:
        ids: list[str] = self._call(self._step.send_event(step_id, events))
        return ids

    def wait_for_signal(self, step_id: str, *, signal: str,
                        timeout: str | int | float | datetime.timedelta,
                        on_conflict: str = "fail") -> dict[str, Any] | None:
        result: dict[str, Any] | None = self._call(self._step.wait_for_signal(
            step_id, signal=signal, timeout=timeout, on_conflict=on_conflict))
        return result

    def invoke(self, step_id: str, *, function: Any, data: dict[str, Any] | None = None,
               timeout: str | int | float | datetime.timedelta | None = None) -> Any:
        return self._call(self._step.invoke(step_id, function=function, data=data,
                                            timeout=timeout))

    def patched(self, change_id: str) -> bool:
        answer: bool = self._call(self._step.patched(change_id))
        return answer

    def deprecate_patch(self, change_id: str) -> None:
        self._call(self._step.deprecate_patch(change_id))

    def publish(self, topic: str, data: Any, *, channel: str | None = None) -> int:
        offset: int = self._call(self._step.publish(topic, data, channel=channel))
        return offset
