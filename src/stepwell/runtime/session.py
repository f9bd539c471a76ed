"""One execution of a run by the in-process executor.

The handler is replayed against the run's memos: a step with a memo returns it at once; a new
step executes and is checkpointed, and the handler *keeps running* (the fast path: a run of N
steps costs N checkpoints, not N replays). The run suspends only when it must wait (sleep,
wait_for_event, invoke, retry backoff): the session then unwinds the handler with `Suspend` once
no step is executing, and hands its queue item back for the time it should resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import inspect
import json
import logging
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from stepwell.core.backoff import retry_delay_ms
from stepwell.core.models import (
    FUNCTION_INVOKED,
    Event,
    Memo,
    error_dict,
    hash_step_id,
)
from stepwell.core.routing import match_key, path_value
from stepwell.core.serialize import NotSerializableError, to_json_value
from stepwell.runtime import admission, scripts
from stepwell.runtime.scripts import Effects, Ending, LeaseLost, Placement
from stepwell.sdk.context import Context, FailureInfo, ReplayAwareLogger, current_attempt
from stepwell.sdk.errors import (
    NonDeterminismError,
    NonRetriableError,
    RetryAfterError,
    StepError,
)
from stepwell.sdk.step import Step, StepRequest, SyncStep
from stepwell.store.base import RunState, Tx, WaitRow

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from stepwell.runtime.clock import Clock
    from stepwell.sdk.app import Function

R = TypeVar("R")
FUNCTION_KEY = "__function__"      # failure counter of code outside steps
log = logging.getLogger("stepwell.run")


class Suspend(BaseException):
    """Unwinds a handler that has to wait. A BaseException so user `except Exception` won't
    swallow it."""


class Host(Protocol):
    """What a session needs from the engine."""

    clock: Clock
    owner: str
    routing: scripts.Routing
    step_pool: Executor
    handler_pool: Executor

    def lease_until(self) -> int: ...

    async def commit(self, fn: Callable[[Tx, Placement, Effects], R]) -> R: ...

    async def read(self, fn: Callable[[Tx], R]) -> R: ...

    def find_function(self, ref: object) -> Function | None: ...


def _fingerprint(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    if not args and not kwargs:
        return ""
    text = json.dumps([args, kwargs], sort_keys=True, default=lambda o: type(o).__name__)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class RunSession:
    def __init__(self, host: Host, fn: Function, state: RunState, item_id: int | None,
                 *, error: FailureInfo | None = None) -> None:
        self.host = host
        self.fn = fn
        self.state = state
        self.run_id = state.run.id
        self.item_id = item_id
        self.memos = state.memos
        self.failures = state.failures
        self._occurrences: dict[str, int] = {}
        self._seq = 0
        self._unconsumed = len(self.memos)
        self._consumed: set[str] = set()
        self._in_flight = 0
        self._suspends: dict[str, int | None] = {}
        self._parked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._warned_new_step = False
        self._error = error

    # --- driving the handler ---------------------------------------------------------------

    def replaying(self) -> bool:
        return self._unconsumed > 0

    def _context(self) -> Context:
        events = self.state.events or [Event(name="", id="")]
        event = events[0]
        if self.fn.spec.failure_of is not None:
            # An on_failure handler sees the original event and the failure (Inngest's shape).
            data = event.data
            event = Event.from_dict(data.get("event") or {"name": ""})
            err = data.get("error") or {}
            self._error = FailureInfo(str(err.get("name", "Error")),
                                      str(err.get("message", "")), str(err.get("stack", "")))
        logger = ReplayAwareLogger(log, self.replaying,
                                   {"run_id": self.run_id, "function_id": self.fn.qualified_id})
        return Context(event=event, events=events, run_id=self.run_id,
                       function_id=self.fn.qualified_id, logger=logger,
                       function_attempt=len(self.failures.get(FUNCTION_KEY, ())),
                       error=self._error)

    async def execute(self) -> None:
        """Run (or resume) the handler until it returns, fails or must wait."""
        ctx = self._context()
        step = Step(self)
        try:
            if self.fn.is_async:
                output = await self.fn.handler(ctx, step)
            else:
                loop = asyncio.get_running_loop()
                call = functools.partial(self.fn.handler, ctx, SyncStep(step, loop))
                output = await loop.run_in_executor(
                    self.host.handler_pool, contextvars.copy_context().run, call)
        except Suspend:
            await self._release()
        except LeaseLost:
            log.info("run %s: lease lost (cancelled or reclaimed); stopping", self.run_id)
        except StepError as exc:
            await self._end("failed", error=exc.error)
        except NonRetriableError as exc:
            await self._end("failed", error=error_dict(exc, stack=traceback.format_exc()))
        except Exception as exc:
            await self._retry_function(exc)
        else:
            try:
                value = to_json_value(output, what=f"function '{self.fn.qualified_id}'")
            except NotSerializableError as exc:
                await self._end("failed", error=error_dict(exc))
            else:
                await self._end("completed", output=value)
        finally:
            if self._parked.done():
                self._parked.exception()   # mark retrieved

    async def _end(self, status: str, *, output: Any = None,
                   error: dict[str, Any] | None = None) -> None:
        run = self.state.run
        ending = Ending(run.id, run.function_id, status,  # type: ignore[arg-type]
                        output=output, error=error, parent_run_id=run.parent_run_id,
                        parent_step=run.parent_step,
                        event=self.state.events[0].to_dict() if self.state.events else None)
        now = self.host.clock.now()
        owner, until, item = self.host.owner, self.host.lease_until(), self.item_id

        def script(tx: Tx, place: Placement, effects: Effects) -> bool:
            scripts.hold(tx, item, owner, until)
            return scripts.end_run(tx, ending, now, place, routing, effects)

        routing = self.host.routing
        with contextlib.suppress(LeaseLost):
            await self.host.commit(script)

    async def _retry_function(self, exc: Exception) -> None:
        """An error outside any step: retry the handler like a step, with its own counter."""
        error = error_dict(exc, stack=traceback.format_exc())
        failures = len(self.failures.get(FUNCTION_KEY, ()))
        if failures >= self.fn.spec.retries:
            await self._end("failed", error=error)
            return
        now = self.host.clock.now()
        due = self._retry_due(exc, FUNCTION_KEY, failures + 1, now)
        owner, until, item, run_id = self.host.owner, self.host.lease_until(), self.item_id, \
            self.run_id

        def script(tx: Tx, place: Placement, effects: Effects) -> None:
            scripts.hold(tx, item, owner, until)
            tx.insert_step_failure(run_id, FUNCTION_KEY, FUNCTION_KEY, failures, error, now)
            if item is not None:
                tx.release_item(item, owner, due, now)

        with contextlib.suppress(LeaseLost):
            await self.host.commit(script)

    def _retry_due(self, exc: BaseException, key: str, failures: int, now: int) -> int:
        if isinstance(exc, RetryAfterError):
            return max(now, exc.due_at(now))
        return now + retry_delay_ms(failures, seed=f"{self.run_id}:{key}")

    async def _release(self) -> None:
        """Hand the queue item back, due when the earliest pending wait/sleep/retry ends."""
        dues = [d for d in self._suspends.values() if d is not None]
        due = min(dues) if dues else None
        owner, item, now = self.host.owner, self.item_id, self.host.clock.now()
        if item is None:
            return

        def script(tx: Tx, place: Placement, effects: Effects) -> bool:
            return tx.release_item(item, owner, due, now)

        await self.host.commit(script)

    # --- suspension --------------------------------------------------------------------------

    def _maybe_park(self) -> None:
        if self._suspends and self._in_flight == 0 and not self._parked.done():
            self._parked.set_exception(Suspend())

    async def _suspend(self, step_hash: str, due: int | None) -> Any:
        self._suspends[step_hash] = due
        self._maybe_park()
        await self._parked
        raise AssertionError("unreachable: a parked session always raises Suspend")

    # --- the step driver ---------------------------------------------------------------------

    async def perform(self, request: StepRequest) -> Any:
        if self._parked.done():
            raise Suspend()
        occurrence = self._occurrences.get(request.step_id, 0)
        self._occurrences[request.step_id] = occurrence + 1
        step_hash = hash_step_id(request.step_id, occurrence)
        seq = self._seq
        self._seq += 1
        fingerprint = _fingerprint(request.args, request.kwargs) if request.kind == "run" else ""
        memo = self.memos.get(step_hash)
        if memo is not None:
            return await self._replay(request, memo, seq, fingerprint)
        if self._unconsumed > 0 and not self._warned_new_step:
            self._warned_new_step = True
            pending = sorted((m for m in self.memos.values()), key=lambda m: m.seq)
            missing = [m.step_id for m in pending if m.seq < seq][:3]
            if missing:
                await self._warn(
                    f"non-determinism: step '{request.step_id}' was reached before recorded "
                    f"step(s) {missing} this time; the handler's step order changed")
        self._in_flight += 1
        try:
            if request.kind == "run":
                return await self._run(request, step_hash, seq, fingerprint)
            if request.kind == "sleep":
                return await self._sleep(request, step_hash, seq)
            if request.kind == "wait":
                return await self._wait(request, step_hash, seq)
            if request.kind == "send":
                return await self._send(request, step_hash, seq)
            return await self._invoke(request, step_hash, seq)
        finally:
            self._in_flight -= 1
            self._maybe_park()

    async def _warn(self, text: str) -> None:
        run_id = self.run_id
        log.warning("run %s: %s", run_id, text)

        def script(tx: Tx, place: Placement, effects: Effects) -> None:
            tx.add_run_warning(run_id, text)

        await self.host.commit(script)

    async def _replay(self, request: StepRequest, memo: Memo, seq: int, fingerprint: str) -> Any:
        if memo.kind != request.kind or (memo.fingerprint and fingerprint
                                         and memo.fingerprint != fingerprint):
            what = (f"was recorded as a '{memo.kind}' step and is now a '{request.kind}' step"
                    if memo.kind != request.kind else "is called with different arguments than "
                    "when it was recorded")
            text = (f"non-determinism: step '{request.step_id}' {what}; its recorded result "
                    "is not reused")
            await self._warn(text)
            raise NonDeterminismError(text)
        if memo.seq != seq and not self._warned_new_step:
            self._warned_new_step = True
            await self._warn(
                f"non-determinism: step '{request.step_id}' was reached at position {seq} but "
                f"recorded at position {memo.seq}; the handler's step order changed")
        now = self.host.clock.now()
        if memo.kind == "sleep" and memo.due_at is not None and memo.due_at > now:
            return await self._suspend(memo.hash, memo.due_at)
        if memo.pending:
            if memo.due_at is None or memo.due_at > now:
                return await self._suspend(memo.hash, memo.due_at)
            memo = await self._resolve_timeout(memo, now)
            if memo.pending:
                return await self._suspend(memo.hash, None)
        self._consume(memo.hash)
        if memo.error is not None:
            raise StepError(request.step_id, memo.error)
        return memo.data

    def _consume(self, step_hash: str) -> None:
        if step_hash not in self._consumed:
            self._consumed.add(step_hash)
            self._unconsumed -= 1

    async def _resolve_timeout(self, memo: Memo, now: int) -> Memo:
        """A wait or invoke whose time is up: resolve it (unless an event won the race)."""
        run_id, step_hash = self.run_id, memo.hash
        outcome: dict[str, Any] = {"data": None} if memo.kind == "wait" else {"error": {
            "name": "InvokeTimeoutError", "stack": "",
            "message": f"invoked function did not finish before step '{memo.step_id}' timed out"}}

        def script(tx: Tx, place: Placement, effects: Effects) -> Memo | None:
            if tx.resolve_memo(run_id, step_hash, outcome, now):
                tx.delete_step_wait(run_id, step_hash)
                return None
            state = tx.load_run_state(run_id)
            return None if state is None else state.memos.get(step_hash)

        fresh = await self.host.commit(script)
        if fresh is None:
            memo.pending = False
            memo.data = outcome.get("data")
            memo.error = outcome.get("error")
            return memo
        self.memos[step_hash] = fresh
        return fresh

    async def _checkpoint(self, memo: Memo,
                          extra: Callable[[Tx, Placement, Effects], None] | None = None) -> None:
        owner, until, item, run_id = self.host.owner, self.host.lease_until(), self.item_id, \
            self.run_id

        def script(tx: Tx, place: Placement, effects: Effects) -> bool:
            if not scripts.commit_memo(tx, run_id, memo, item, owner, until):
                return False
            if extra is not None:
                extra(tx, place, effects)
            return True

        if not await self.host.commit(script):
            # Someone else already committed this step: this worker's lease was stale.
            raise LeaseLost(f"step {memo.step_id} of run {run_id} was committed elsewhere")
        self.memos[memo.hash] = memo
        self._consumed.add(memo.hash)

    async def _run(self, request: StepRequest, step_hash: str, seq: int, fingerprint: str) -> Any:
        failures = len(self.failures.get(step_hash, ()))
        started = self.host.clock.now()
        assert request.fn is not None
        token = current_attempt.set(failures)
        try:
            value = await self._call(request)
            data = to_json_value(value, what=f"step '{request.step_id}'")
        except NotSerializableError as exc:
            return await self._step_failed(request, step_hash, seq, fingerprint, failures,
                                           started, exc, final=True)
        except Exception as exc:
            final = (isinstance(exc, NonRetriableError) or failures >= self.fn.spec.retries)
            return await self._step_failed(request, step_hash, seq, fingerprint, failures,
                                           started, exc, final=final)
        finally:
            current_attempt.reset(token)
        memo = Memo(step_hash, request.step_id, "run", seq, data=data, fingerprint=fingerprint,
                    attempts=failures + 1, started_at=started, ended_at=self.host.clock.now())
        await self._checkpoint(memo)
        return data

    async def _call(self, request: StepRequest) -> Any:
        fn = request.fn
        assert fn is not None
        if inspect.iscoroutinefunction(fn):
            return await fn(*request.args, **request.kwargs)
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, *request.args, **request.kwargs)
        result = await loop.run_in_executor(self.host.step_pool,
                                            contextvars.copy_context().run, call)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _step_failed(self, request: StepRequest, step_hash: str, seq: int,
                           fingerprint: str, failures: int, started: int, exc: Exception,
                           *, final: bool) -> Any:
        error = error_dict(exc, stack=traceback.format_exc())
        now = self.host.clock.now()
        if final:
            memo = Memo(step_hash, request.step_id, "run", seq, error=error,
                        fingerprint=fingerprint, attempts=failures + 1, started_at=started,
                        ended_at=now)
            run_id = self.run_id

            def record(tx: Tx, place: Placement, effects: Effects) -> None:
                tx.insert_step_failure(run_id, step_hash, request.step_id, failures, error, now)

            await self._checkpoint(memo, record)
            raise StepError(request.step_id, error)
        due = self._retry_due(exc, step_hash, failures + 1, now)
        owner, until, item, run_id = self.host.owner, self.host.lease_until(), self.item_id, \
            self.run_id

        def script(tx: Tx, place: Placement, effects: Effects) -> None:
            scripts.hold(tx, item, owner, until)
            tx.insert_step_failure(run_id, step_hash, request.step_id, failures, error, now)

        await self.host.commit(script)
        self._in_flight -= 1
        try:
            return await self._suspend(step_hash, due)
        finally:
            self._in_flight += 1

    async def _sleep(self, request: StepRequest, step_hash: str, seq: int) -> None:
        now = self.host.clock.now()
        due = request.until_ms if request.until_ms is not None else now + (request.sleep_ms or 0)
        memo = Memo(step_hash, request.step_id, "sleep", seq, due_at=due, started_at=now,
                    ended_at=due)
        await self._checkpoint(memo)
        if due > now:
            self._in_flight -= 1
            try:
                await self._suspend(step_hash, due)
            finally:
                self._in_flight += 1

    async def _wait(self, request: StepRequest, step_hash: str, seq: int) -> Any:
        now = self.host.clock.now()
        assert request.timeout_ms is not None
        due = now + request.timeout_ms
        event = self.state.events[0].to_dict() if self.state.events else {}
        key = None
        if request.match_path is not None:
            key = match_key(request.match_path, path_value(event, request.match_path))
        wait = WaitRow(run_id=self.run_id, kind="wait", event_name=request.event_name,
                       expires_at=due, step_hash=step_hash, match_key=key,
                       expr=None if request.condition is None else request.condition.source,
                       event_ctx=event)
        memo = Memo(step_hash, request.step_id, "wait", seq, due_at=due, started_at=now,
                    pending=True)

        def register(tx: Tx, place: Placement, effects: Effects) -> None:
            tx.insert_wait(wait)

        await self._checkpoint(memo, register)
        self._in_flight -= 1
        try:
            return await self._suspend(step_hash, due)
        finally:
            self._in_flight += 1

    async def _send(self, request: StepRequest, step_hash: str, seq: int) -> list[str]:
        now = self.host.clock.now()
        events = []
        for raw in request.events:
            event = Event.from_dict(raw)
            event.id = event.id or scripts.new_id()
            event.ts = event.ts or now
            events.append(event)
        ids = [e.id for e in events]
        memo = Memo(step_hash, request.step_id, "send", seq, data=ids, started_at=now,
                    ended_at=now)

        def store(tx: Tx, place: Placement, effects: Effects) -> None:
            scripts.store_emitted(tx, events, now, effects)

        await self._checkpoint(memo, store)
        return ids

    async def _invoke(self, request: StepRequest, step_hash: str, seq: int) -> Any:
        now = self.host.clock.now()
        target = self.host.find_function(request.function)
        if target is None:
            error = {"name": "FunctionNotFoundError", "stack": "",
                     "message": f"step '{request.step_id}': no function {request.function!r} is "
                                "registered (give a function object, 'fn-id' or 'app-id/fn-id')"}
            await self._checkpoint(Memo(step_hash, request.step_id, "invoke", seq, error=error,
                                        started_at=now, ended_at=now))
            raise StepError(request.step_id, error)
        due = None if request.timeout_ms is None else now + request.timeout_ms
        memo = Memo(step_hash, request.step_id, "invoke", seq, due_at=due, started_at=now,
                    pending=True)
        child_event = Event(name=FUNCTION_INVOKED, data=dict(request.data or {}),
                            id=scripts.new_id(), ts=now)
        spec, run_id, routing = target.spec, self.run_id, self.host.routing

        def start_child(tx: Tx, place: Placement, effects: Effects) -> None:
            tx.insert_event(child_event, now, now, processed=True)
            admission.start_run(tx, spec, [child_event], now, place, effects,
                                routing=routing, parent=(run_id, step_hash))

        await self._checkpoint(memo, start_child)
        self._in_flight -= 1
        try:
            return await self._suspend(step_hash, due)
        finally:
            self._in_flight += 1

