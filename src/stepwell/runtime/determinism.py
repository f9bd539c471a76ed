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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stepwell.core.jsontext import encode_with
from stepwell.core.models import Memo, hash_step_id
from stepwell.sdk.context import Context
from stepwell.sdk.errors import StepError
from stepwell.sdk.step import Step, StepDriver, StepRequest, SyncStep

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
    text = _FINGERPRINT_ENCODE([args, kwargs])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _type_name(value: Any) -> str:
    return type(value).__name__


# Built once (as `json.dumps(..., sort_keys=True, default=...)` would per call): the text,
# and so every stored fingerprint, is the same.
_FINGERPRINT_ENCODE = encode_with(json.JSONEncoder(sort_keys=True, default=_type_name))


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


def ran_in_parallel(memos: Mapping[str, Memo]) -> bool:
    """Whether recorded steps overlapped in time: parallel branches interleave differently
    from one execution to the next, so positions say nothing about changed code then. Ties
    are broken by recording order: on the virtual clock steps in sequence share one instant,
    and a sleep started at it must not look like it overlaps the steps before."""
    ends: float = float("-inf")
    for memo in sorted(memos.values(), key=lambda m: (m.started_at or 0, m.seq)):
        started = memo.started_at or 0
        if started < ends:
            return True
        ends = max(ends, memo.ended_at if memo.ended_at is not None else float("inf"))
    return False


@dataclass(frozen=True, slots=True)
class Divergence:
    """Where a replay of recorded history went another way than the recording: what kind of
    change (`changed-kind`, `changed-args`, `reordered`, `inserted`, `removed`,
    `deprecated-patch`), at which step, what the history has and what the code does now, the
    fix, and the whole sentence (`message`) as run errors and reports show it."""

    kind: str
    step_id: str
    recorded: str
    now: str
    fix: str
    message: str


REORDER_FIX = ("the order of steps must not depend on values computed outside steps; to "
               "reorder steps for new runs only, guard the change with `step.patched()`")
PATCH_FIX = ("guard the change with `if await step.patched('<change-id>'):` (new code) "
             "`else:` (old code), so runs recorded under the old code keep the old path")


class ReplayCheck:
    """A step driver that answers every step from the memos and never executes one.

    `strict` (deploy checks, `stepwell.testing.replay`) also reports a new step reached while
    recorded steps still lie ahead (`inserted`) and recorded steps the code no longer reaches
    (`removed`, see `finished`); the check run at each suspension under `stepwell dev` is not
    strict, as its code is the code that recorded the history. `execute` is a driver for the
    steps the recording does not have (`stepwell.testing.replay(..., continue_=True)`); without
    it the replay stops there."""

    def __init__(self, memos: Mapping[str, Memo], args_seen: Mapping[str, tuple[
            tuple[Any, ...], dict[str, Any]]], *, ordered: bool, strict: bool = False,
                 execute: StepDriver | None = None) -> None:
        self.memos = memos
        self.args_seen = args_seen
        self.ordered = ordered          # False when recorded steps ran in parallel
        self.strict = strict
        self.execute = execute
        self.found: Divergence | None = None
        self.replayed = 0
        self._consumed: set[str] = set()
        self._misplaced: tuple[str, int, int] | None = None    # (step, recorded, reached)
        self._occurrences: dict[str, int] = {}
        self._seq = 0

    @property
    def divergence(self) -> str | None:
        return None if self.found is None else self.found.message

    def _diverge(self, kind: str, step_id: str, recorded: str, now: str, fix: str,
                 message: str | None = None) -> _Diverged:
        if self.found is None:
            text = message or (f"non-determinism: step '{step_id}': {recorded} in the "
                               f"recorded history, {now} in the code; {fix}")
            self.found = Divergence(kind, step_id, recorded, now, fix, text)
        return _Diverged(self.found.message)

    def _ahead(self) -> list[Memo]:
        """Recorded steps not replayed yet, in recorded order (a rerun's input is no step)."""
        return sorted((m for m in self.memos.values()
                       if m.hash not in self._consumed and m.kind != "input"),
                      key=lambda m: m.seq)

    def _skipped(self) -> list[Memo]:
        """Recorded steps not replayed although a step recorded after them was."""
        last = max((self.memos[h].seq for h in self._consumed), default=-1)
        return [m for m in self._ahead() if m.seq < last]

    def settle(self, *, ended: bool) -> None:
        """The replay is over (strict mode decides here what a misplaced step meant): recorded
        steps skipped over (or, if the handler `ended`, never reached) were removed; steps
        misplaced otherwise were reordered."""
        if not self.strict or self.found is not None:
            return
        gone = [m for m in self._ahead() if not m.pending] if ended else self._skipped()
        if gone:
            self._removed(gone)
        elif self._misplaced is not None:
            step_id, recorded, seq = self._misplaced
            self._diverge("reordered", step_id, f"reached at position {recorded}",
                          f"reached at position {seq}", REORDER_FIX)

    def _removed(self, gone: list[Memo]) -> _Diverged:
        ids = ", ".join(repr(m.step_id) for m in gone[:3])
        return self._diverge(
            "removed", gone[0].step_id, f"step(s) {ids} recorded",
            "the handler no longer reaches them",
            "replace the removed `patched(...)` call by `step.deprecate_patch(...)` until no "
            "unfinished run recorded it" if gone[0].kind == "patch" else
            "keep the removed step for the runs recorded with it: " + PATCH_FIX)

    async def publish(self, topic: str, data: Any, channel: str | None) -> int:
        """The check has no side effects: nothing is published (the offset is 0)."""
        return 0

    async def perform(self, request: StepRequest) -> Any:
        occurrence = self._occurrences.get(request.key, 0)
        self._occurrences[request.key] = occurrence + 1
        step_hash = hash_step_id(request.key, occurrence)
        memo = self.memos.get(step_hash)
        if request.kind == "patch":
            return self._patch(request, memo)
        seq = self._seq
        self._seq += 1
        if memo is None:
            return await self._unrecorded(request, step_hash)
        if memo.kind != request.kind:
            raise self._diverge(
                "changed-kind", request.step_id, f"a '{memo.kind}' step",
                f"a '{request.kind}' step", "give the new step its own id",
                f"non-determinism: step '{request.step_id}' was recorded as a '{memo.kind}' "
                f"step and is a '{request.kind}' step on replay; give the new step its own id")
        # A step recorded without arguments has no fingerprint; strict checks compare anyway.
        if request.kind == "run" and (memo.fingerprint or self.strict):
            new = (request.args, dict(request.kwargs))
            if fingerprint(*new) != memo.fingerprint:
                old = self.args_seen.get(step_hash)
                raise self._diverge("changed-args", request.step_id,
                                    "called with other arguments",
                                    f"called with {_short.repr(list(new[0]))}", FIX,
                                    describe_change(request.step_id, old, new))
        if self.ordered and memo.seq != seq and self.strict:
            if self._misplaced is None:             # removed or reordered: `settle` decides
                self._misplaced = (request.step_id, memo.seq, seq)
        elif self.ordered and memo.seq != seq:
            raise self._diverge(
                "reordered", request.step_id, f"reached at position {memo.seq}",
                f"reached at position {seq}", REORDER_FIX,
                f"non-determinism: step '{request.step_id}' is reached at position {seq} on "
                f"replay but was recorded at position {memo.seq}; {REORDER_FIX}")
        if memo.pending:
            raise _Stop()
        self._consumed.add(step_hash)
        self.replayed += 1
        if memo.error is not None:
            raise StepError(request.step_id, memo.error)
        return memo.data

    def _patch(self, request: StepRequest, memo: Memo | None) -> bool | None:
        if memo is None:
            if request.deprecated:
                return None
            if not self.strict and self.execute is None:
                raise _Stop()
            return not self._ahead()          # what the engine records: True at the frontier
        if memo.kind != "patch":
            raise self._diverge("changed-kind", request.step_id, f"a '{memo.kind}' step",
                                "a patch", "give the patch its own id")
        self._consumed.add(memo.hash)
        if request.deprecated:
            if memo.data is False:
                raise self._diverge(
                    "deprecated-patch", request.step_id, "the old branch taken (patched() "
                    "was False)", "deprecate_patch() (only the new branch)",
                    "keep `patched()` until no unfinished run took the old branch")
            return None
        return bool(memo.data)

    async def _unrecorded(self, request: StepRequest, step_hash: str) -> Any:
        """A step the recording does not have: new code past the recorded end, or (strict,
        with recorded steps still ahead) a step inserted before recorded ones."""
        ahead = self._ahead()
        skipped = self._skipped() if self.strict else []
        if skipped:
            raise self._removed(skipped)
        if self.strict and self.ordered and ahead:
            ids = ", ".join(repr(m.step_id) for m in ahead[:3])
            raise self._diverge(
                "inserted", request.step_id, f"no such step before {ids}",
                "a new step reached first (the run would execute it after the steps "
                "recorded after it)",
                "runs already past this point must skip it: " + PATCH_FIX)
        if self.execute is None or ahead:
            raise _Stop()
        return await self.execute.perform(request)


@dataclass(slots=True)
class ReplayEnd:
    """How a replay ended: at the frontier of the recording (`stopped`), diverged (the check's
    `found`), or with the handler returning `output` or raising `error`."""

    stopped: bool = False
    output: Any = None
    error: BaseException | None = None


async def replay_handler(fn: Function, ctx: Context, check: ReplayCheck,
                         handler_pool: Executor, *, timeout: float = CHECK_TIMEOUT_S
                         ) -> ReplayEnd:
    """Run the handler with `check` as its step driver: every recorded step answered from the
    memos, no step body executed (unless `check.execute`)."""
    step = Step(check)
    loop = asyncio.get_running_loop()

    async def replay() -> Any:
        if fn.is_async:
            return await fn.handler(ctx, step)
        call: Callable[[], Any] = functools.partial(fn.handler, ctx, SyncStep(step, loop))
        return await loop.run_in_executor(handler_pool, contextvars.copy_context().run, call)

    end = ReplayEnd()
    try:
        async with asyncio.timeout(timeout):       # no task per replay, unlike wait_for
            end.output = await replay()
    except (_Stop, TimeoutError):     # the frontier, or awaiting something that is no step
        end.stopped = True
    except _Diverged:
        pass
    except Exception as exc:
        end.error = exc
    finally:
        step.never_awaited()
    check.settle(ended=not end.stopped)
    return end


async def check_replay(fn: Function, ctx: Context, check: ReplayCheck,
                       handler_pool: Executor) -> str | None:
    """Replay the handler against the memos; the divergence found, or None. Whatever the
    replay did besides diverging is the real run's business, not the check's."""
    await replay_handler(fn, ctx, check, handler_pool)
    return check.divergence
