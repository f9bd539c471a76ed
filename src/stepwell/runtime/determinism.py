"""Replaying a run from its memos right away, to catch non-determinism where it is written.

A handler must reach the same steps, in the same order, with the same arguments on every
replay. In production a run is replayed only when it resumes from the database (after a long
sleep, a wait, a retry, a restart), so a value computed outside a step (`uuid4()`, `now()`)
and passed to a step passes every quick test and fails a week later. Under `stepwell dev` and
the virtual clock of `stepwell.testing` the engine therefore replays every run from its memos
at each suspension and when it ends (`Engine(check_determinism=...)`), with no step body
executed: a changed argument, a changed step kind or a changed order fails the run at once,
naming the step, what changed (old and new values, abbreviated) and the fix.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import json
import reprlib
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from stepwell.core.models import Memo, hash_step_id
from stepwell.sdk.context import Context
from stepwell.sdk.errors import StepError
from stepwell.sdk.step import Step, StepRequest, SyncStep

if TYPE_CHECKING:
    from stepwell.sdk.app import Function

CHECK_TIMEOUT_S = 10.0          # a replay that awaits something outside steps is given up
_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 40

FIX = ("compute the value in a step (e.g. `await step.run('make-id', lambda: "
       "str(uuid.uuid4()))`) or derive it from ctx.run_id / ctx.event.id, so every replay "
       "sees the same value")


class _Stop(BaseException):
    """The replay reached what is not recorded yet (or still pending): nothing more to check."""


class _Diverged(BaseException):
    """The replay went another way than the recording. A BaseException: the handler's own
    `except Exception` must not hide it."""


def fingerprint(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """What a `run` step's memo records of its arguments (a hash: arguments may be large or
    private); replays compare it to tell "the same step" from "the same id, other inputs"."""
    if not args and not kwargs:
        return ""
    text = json.dumps([args, kwargs], sort_keys=True, default=lambda o: type(o).__name__)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def describe_change(step_id: str, old: tuple[tuple[Any, ...], dict[str, Any]] | None,
                    new: tuple[tuple[Any, ...], dict[str, Any]]) -> str:
    """Which argument of a step changed, old vs new, abbreviated."""
    head = f"non-determinism: step '{step_id}' is called with different arguments on replay"
    if old is None:
        return f"{head}; {FIX}"
    (old_args, old_kwargs), (new_args, new_kwargs) = old, new
    for index in range(max(len(old_args), len(new_args))):
        before = old_args[index] if index < len(old_args) else "<none>"
        after = new_args[index] if index < len(new_args) else "<none>"
        if before != after:
            return (f"{head}: argument {index + 1} was {_short.repr(before)} and is now "
                    f"{_short.repr(after)}; {FIX}")
    for name in sorted(set(old_kwargs) | set(new_kwargs)):
        before, after = old_kwargs.get(name, "<none>"), new_kwargs.get(name, "<none>")
        if before != after:
            return (f"{head}: {name}= was {_short.repr(before)} and is now "
                    f"{_short.repr(after)}; {FIX}")
    return f"{head}; {FIX}"


class ReplayCheck:
    """A step driver that answers every step from the memos and never executes one."""

    def __init__(self, memos: Mapping[str, Memo], args_seen: Mapping[str, tuple[
            tuple[Any, ...], dict[str, Any]]], *, ordered: bool) -> None:
        self.memos = memos
        self.args_seen = args_seen
        self.ordered = ordered          # False when recorded steps ran in parallel
        self.divergence: str | None = None
        self._occurrences: dict[str, int] = {}
        self._seq = 0

    def _diverge(self, text: str) -> _Diverged:
        if self.divergence is None:
            self.divergence = text
        return _Diverged(text)

    async def perform(self, request: StepRequest) -> Any:
        occurrence = self._occurrences.get(request.step_id, 0)
        self._occurrences[request.step_id] = occurrence + 1
        step_hash = hash_step_id(request.step_id, occurrence)
        seq = self._seq
        self._seq += 1
        memo = self.memos.get(step_hash)
        if memo is None:
            raise _Stop()
        if memo.kind != request.kind:
            raise self._diverge(
                f"non-determinism: step '{request.step_id}' was recorded as a '{memo.kind}' "
                f"step and is a '{request.kind}' step on replay; give the new step its own id")
        if request.kind == "run" and memo.fingerprint:
            new = (request.args, dict(request.kwargs))
            if fingerprint(*new) != memo.fingerprint:
                raise self._diverge(describe_change(request.step_id,
                                                    self.args_seen.get(step_hash), new))
        if self.ordered and memo.seq != seq:
            raise self._diverge(
                f"non-determinism: step '{request.step_id}' is reached at position {seq} on "
                f"replay but was recorded at position {memo.seq}; the order of steps must not "
                "depend on values computed outside steps")
        if memo.pending:
            raise _Stop()
        if memo.error is not None:
            raise StepError(request.step_id, memo.error)
        return memo.data


async def check_replay(fn: Function, ctx: Context, check: ReplayCheck,
                       handler_pool: Executor) -> str | None:
    """Replay the handler against the memos; the divergence found, or None."""
    step = Step(check)
    loop = asyncio.get_running_loop()

    async def replay() -> None:
        if fn.is_async:
            await fn.handler(ctx, step)
        else:
            call: Callable[[], Any] = functools.partial(fn.handler, ctx, SyncStep(step, loop))
            await loop.run_in_executor(handler_pool, contextvars.copy_context().run, call)

    try:
        await asyncio.wait_for(replay(), CHECK_TIMEOUT_S)
    except (_Stop, _Diverged, Exception):
        # Whatever the replay did besides diverging is the real run's business, not the
        # check's: only a divergence is reported.
        pass
    finally:
        step.never_awaited()
    return check.divergence
