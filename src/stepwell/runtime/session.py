"""The in-process executor: one execution of a native run.

The handler is replayed against the run's memos: a step with a memo returns it at once; a new
step executes and is checkpointed, and the handler *keeps running* (the fast path: a run of N
steps costs N checkpoints, not N replays). The run suspends only when it must wait (sleep,
wait_for_event, invoke, retry backoff): the session then unwinds the handler with `Suspend` once
no step is executing, and hands its queue item back for the time it should resume.

Short sleeps stay in memory (`park`): a run that sleeps for less than the engine's prefetch
horizon keeps its lease and resumes at the instant, and a timer item leased ahead of its instant
is replayed at once and parks at the sleep it was leased for. The sleep's memo is committed
first either way, so a crash loses nothing: the lease expires and another worker resumes it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stepwell.core.models import Event, Memo, error_dict, hash_step_id
from stepwell.core.serialize import NotSerializableError, to_json_value
from stepwell.core.signing import sign_token
from stepwell.runtime.determinism import (
    ReplayCheck,
    check_replay,
    fingerprint,
    ran_in_parallel,
)
from stepwell.runtime.driver import Host, RunDriver
from stepwell.runtime.interrupts import LiveRun
from stepwell.runtime.scripts import LeaseLost
from stepwell.runtime.secrets import server_secret
from stepwell.runtime.streams import Publisher
from stepwell.runtime.usercode import user_traceback
from stepwell.sdk.context import (
    Context,
    FailureInfo,
    ReplayAwareLogger,
    current_attempt,
    current_signer,
    current_step,
)
from stepwell.sdk.errors import NonDeterminismError, NonRetriableError, RetryAfterError, StepError
from stepwell.sdk.step import Step, StepRequest, SyncStep
from stepwell.sdk.types import rebuild
from stepwell.sdk.usage import collecting_usage
from stepwell.store.base import RunState

if TYPE_CHECKING:
    from stepwell.sdk.app import Function

log = logging.getLogger("stepwell.run")


class Suspend(BaseException):
    """Unwinds a handler that has to wait. A BaseException so user `except Exception` won't
    swallow it."""


class EngineFault(BaseException):
    """Unwinds a handler when stepwell itself failed at a step (a checkpoint that could not be
    committed, a bug): a BaseException so user `except Exception` won't swallow it and carry on
    past a step whose outcome was not recorded. The session re-raises the original error for
    `faults.crashed` to record."""


def _not_awaited(step_ids: list[str]) -> dict[str, Any]:
    """The error of a run whose handler called steps without awaiting them: those steps never
    ran, so the run cannot have done what its code says."""
    first = step_ids[0]
    return {"name": "StepNotAwaitedError", "stack": "",
            "message": f"step '{first}' was called but never awaited, so it never ran"
                       + (f" (also: {', '.join(repr(s) for s in step_ids[1:4])})"
                          if len(step_ids) > 1 else "")
                       + ": put `await` before the step call (or hand it to asyncio.gather); "
                         "a plain `def` handler's SyncStep needs no await"}


def _retry_after(exc: BaseException, now: int) -> int | None:
    return exc.due_at(now) if isinstance(exc, RetryAfterError) else None


def run_context(fn: Function, events: list[Event], run_id: str, *, attempt: Callable[[], int],
                replaying: Callable[[], bool],
                cancelled: Callable[[], bool] = lambda: False) -> Context:
    """The `ctx` a handler gets: the first event (typed if the function declares its data; for
    an on_failure handler the original event and the failure, Inngest's shape), all events,
    and a logger that stays quiet while `replaying()`."""
    events = events or [Event(name="", id="")]
    event, error = events[0], None
    if fn.spec.failure_of is not None:
        data = event.data
        event = Event.from_dict(data.get("event") or {"name": ""})
        err = data.get("error") or {}
        error = FailureInfo(str(err.get("name", "Error")), str(err.get("message", "")),
                            str(err.get("stack", "")))
    schema = fn.event_type(event.name)
    if schema is not None:
        # Data sent by an SDK app, the HTTP API or an older version of the code is checked
        # here; `rebuild` raises DataMismatchError (non-retriable) naming the field.
        event = Event(name=event.name, id=event.id, ts=event.ts, user=event.user,
                      data=rebuild(schema, event.data,
                                   what=f"the data of event '{event.name}' ({event.id})"))
    logger = ReplayAwareLogger(log, replaying, {"run_id": run_id, "function_id": fn.qualified_id})
    return Context(event=event, events=events, run_id=run_id, function_id=fn.qualified_id,
                   logger=logger, function_attempt=attempt, error=error, cancelled=cancelled)


class RunSession(RunDriver):
    def __init__(self, host: Host, fn: Function, state: RunState, item_id: int | None, *,
                 not_before: int | None = None, may_park: bool = False) -> None:
        super().__init__(host, fn.spec, state, item_id)
        self.fn = fn
        # The item was leased ahead of `resume_at`: the replay may run now, but no step may
        # execute and nothing may be committed before it (`_gate`).
        self.resume_at = not_before
        self._not_before = not_before
        self.may_park = may_park
        self._unverified = False      # parked since the lease was last checked
        self._occurrences: dict[str, int] = {}
        self._seq = 0
        # Recorded steps not yet replayed ("input" memos are a rerun's arguments, not steps).
        self._unconsumed = sum(1 for memo in self.memos.values() if memo.kind != "input")
        self._consumed: set[str] = set()
        self._in_flight = 0
        self._suspends: dict[str, tuple[int | None, bool]] = {}   # hash -> (due, is a timer)
        self._unwind: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._warned_order = False
        self._unwind_pending = False
        self._fault: Exception | None = None
        # Arguments of the `run` steps seen by this execution, to say what changed when a
        # determinism check finds other arguments (memos keep only a hash).
        self._args_seen: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self._live: LiveRun | None = None
        self._publisher = Publisher(self)

    # --- driving the handler ---------------------------------------------------------------

    def replaying(self) -> bool:
        return self._unconsumed > 0

    def _context(self) -> Context:
        return run_context(self.fn, self.state.events, self.run_id,
                           attempt=self.function_attempt, replaying=self.replaying,
                           cancelled=self._cancelled)

    def _cancelled(self) -> bool:
        return self._live is not None and self._live.cancelled

    async def _sign(self, claims: dict[str, Any], ttl: float) -> str:
        """A token signed with the server's secret, valid `ttl` seconds (`current_signer`)."""
        secret = await server_secret(self.host)
        return sign_token(secret, claims, now=self.now() / 1000, ttl=ttl)

    async def execute(self) -> None:
        """Run (or resume) the handler until it returns, fails or must wait. While it runs,
        the run is registered with `host.interrupts`, so that a cancellation stops a step body
        in progress (runtime/interrupts.py)."""
        self._live = self.host.interrupts.enter(self.run_id)
        self.trace_woken()
        cancelled = False
        try:
            await self._execute()
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            self.host.interrupts.leave(self._live)
            await self.settle_writes(flush=not cancelled)

    async def _execute(self) -> None:
        step = Step(self)
        signer = current_signer.set(self._sign)
        try:
            ctx = self._context()       # typed event data that does not fit fails the run here
            if self.fn.is_async:
                output = await self.fn.handler(ctx, step)
            else:
                loop = asyncio.get_running_loop()
                call = functools.partial(self.fn.handler, ctx, SyncStep(step, loop))
                output = await loop.run_in_executor(
                    self.host.handler_pool, contextvars.copy_context().run, call)
        except EngineFault:
            self._raise_fault()
        except Suspend:
            self._raise_fault()
            try:
                await self._gate()
                if await self._diverged():
                    return
                dues = [due for due, _ in self._suspends.values() if due is not None]
                timer = all(is_timer for _, is_timer in self._suspends.values())
                self.trace_due_sleeps(handing_back=True)
                # Under the lease when it carries a deferred memo: LeaseLost if it is gone.
                await self.release(min(dues) if dues else None, timer=timer)
            except LeaseLost:
                self._lease_lost()
        except LeaseLost:
            self._lease_lost()
        except StepError as exc:
            self._raise_fault()
            await self._gate()
            await self.end("failed", error=exc.error)
        except NonRetriableError as exc:
            self._raise_fault()
            await self._gate()
            await self.end("failed", error=error_dict(exc, stack=user_traceback(exc)))
        except Exception as exc:
            self._raise_fault()
            await self._gate()
            await self.retry_function(error_dict(exc, stack=user_traceback(exc)),
                                      after_ms=_retry_after(exc, self.now()))
        else:
            self._raise_fault()
            await self._gate()
            missed = step.never_awaited()
            if missed:
                await self.end("failed", error=_not_awaited(missed))
                return
            if await self._diverged():
                return
            try:
                value = to_json_value(output, what=f"function '{self.fn.qualified_id}'")
            except NotSerializableError as exc:
                await self.end("failed", error=error_dict(exc))
            else:
                await self.end("completed", output=value)
        finally:
            current_signer.reset(signer)
            step.never_awaited()           # close the rest, so Python does not warn later
            if self._unwind.done():
                self._unwind.exception()   # mark retrieved

    def _lease_lost(self) -> None:
        log.info("run %s: lease lost (cancelled or reclaimed); stopping", self.run_id)

    async def _diverged(self) -> bool:
        """`Engine(check_determinism=True)` (`stepwell dev`, the virtual clock): replay the
        handler from the memos now, and fail the run if it goes another way."""
        if not self.host.check_determinism or not self.memos:
            return False
        ctx = self._context()
        ctx.logger = ReplayAwareLogger(log, lambda: True, {})     # the check logs nothing
        check = ReplayCheck(dict(self.memos), self._args_seen,
                            ordered=not self._ran_in_parallel())
        divergence = await check_replay(self.fn, ctx, check, self.host.handler_pool)
        if divergence is None:
            return False
        await self.end("failed", error={"name": "NonDeterminismError", "message": divergence,
                                        "stack": ""})
        return True

    def _raise_fault(self) -> None:
        """If stepwell failed at a step, whatever the handler did next is moot: hand the
        original error to the session's caller (`items.execute`, then `faults.crashed`)."""
        if self._fault is not None:
            raise self._fault

    # --- suspension --------------------------------------------------------------------------

    def _maybe_unwind(self) -> None:
        """Unwind the handler once every unfinished step is suspended. Decided two loop turns
        later: a branch whose step just returned must get the chance to start its next step
        (or the tasks of a nested gather) first, else it would wait for the others to resume."""
        if self._suspends and self._in_flight == 0 and not self._unwind_pending:
            self._unwind_pending = True
            asyncio.get_running_loop().call_soon(self._unwind_if_idle, 2)

    def _unwind_if_idle(self, turns: int) -> None:
        if not (self._suspends and self._in_flight == 0) or self._unwind.done():
            self._unwind_pending = False
        elif turns > 1:
            asyncio.get_running_loop().call_soon(self._unwind_if_idle, turns - 1)
        else:
            self._unwind_pending = False
            self._unwind.set_exception(Suspend())

    async def _gate(self) -> None:
        """Wait for the instant the item was leased ahead of, before acting."""
        if self._not_before is not None:
            if self.now() < self._not_before:
                await self._park_until(self._not_before)
            self._not_before = None

    async def _park_until(self, when: int) -> None:
        await self.host.park_until(when)
        self._unverified = True

    async def _verify_lease(self) -> None:
        """After a park, make sure the run is still ours (it may have been cancelled meanwhile)
        before a step body runs: renew the lease, or raise LeaseLost."""
        if self._unverified:
            self._unverified = False
            await self.write(lambda tx, place, effects: None)

    def _may_park(self, due: int) -> bool:
        """Whether a sleep until `due` may be spent in memory. A timer item leased ahead parks
        at the sleeps due by its instant (all it waits for is time); otherwise only a run
        whose sleep is its one unfinished step parks, so that a parallel branch waiting for
        an event is never held back by a sleeping one."""
        if not self.may_park:
            return False
        if self.resume_at is not None and due <= self.resume_at:
            return True
        return self._in_flight == 1 and not self._suspends and self.host.may_park(due)

    async def _suspend(self, step_hash: str, due: int | None, *, timer: bool = False) -> Any:
        """Wait for the run to park (no step still executing), then unwind with Suspend.
        `timer`: only time resumes this step (a sleep or a retry backoff)."""
        self._in_flight -= 1
        try:
            self._suspends[step_hash] = (due, timer)
            self._maybe_unwind()
            await self._unwind
        finally:
            self._in_flight += 1
        raise AssertionError("unreachable: a parked session always raises Suspend")

    # --- the step driver ---------------------------------------------------------------------

    async def publish(self, topic: str, data: Any, channel: str | None) -> int:
        """`step.publish` (runtime/streams.py)."""
        return await self._publisher.publish(topic, data, channel)

    async def perform(self, request: StepRequest) -> Any:
        """A step, as the handler awaits it. Its outcome reaches the handler as a value,
        StepError, NonDeterminismError or Suspend; anything else escaping is stepwell's own
        failure, which unwinds the whole handler (`EngineFault`)."""
        try:
            return await self._perform(request)
        except (Suspend, StepError, NonRetriableError, LeaseLost):
            raise
        except Exception as exc:
            if self._fault is None:
                self._fault = exc
            if not self._unwind.done():
                self._unwind.set_exception(Suspend())     # every other branch unwinds too
            raise EngineFault(f"stepwell failed at step '{request.step_id}'") from exc

    async def _perform(self, request: StepRequest) -> Any:
        if self._unwind.done():
            raise Suspend()
        occurrence = self._occurrences.get(request.key, 0)
        self._occurrences[request.key] = occurrence + 1
        step_hash = hash_step_id(request.key, occurrence)
        if request.kind == "patch":
            self._in_flight += 1
            try:
                return await self._patch(request, step_hash)
            finally:
                self._in_flight -= 1
                self._maybe_unwind()
        seq = self._seq
        self._seq += 1
        args_hash = fingerprint(request.args, request.kwargs) if request.kind == "run" else ""
        if request.kind == "run":
            self._args_seen[step_hash] = (request.args, dict(request.kwargs))
        self._in_flight += 1
        try:
            memo = self.memos.get(step_hash)
            if memo is not None:
                return await self._replay(request, memo, seq, args_hash)
            await self._gate()
            await self._verify_lease()
            if self._unconsumed > 0:
                await self._warn_new_step(request.step_id, seq)
            if request.kind == "run":
                return await self._run(request, step_hash, seq, args_hash)
            if request.kind == "sleep":
                return await self._sleep(request, step_hash, seq)
            if request.kind == "wait" and request.signal is not None:
                assert request.timeout_ms is not None
                held = await self.wait_for_signal(
                    step_hash, request.step_id, seq, signal=request.signal,
                    timeout_ms=request.timeout_ms, conflict=request.on_conflict)
                self._consumed.add(step_hash)
                if held is None:          # another run holds the name and on_conflict="fail"
                    raise StepError(request.step_id, self.memos[step_hash].error or {})
                return await self._suspend(step_hash, held)
            if request.kind == "wait":
                assert request.timeout_ms is not None
                due = await self.wait_for_event(
                    step_hash, request.step_id, seq, event_name=request.event_name,
                    timeout_ms=request.timeout_ms, match_path=request.match_path,
                    condition=None if request.condition is None else request.condition.source)
                self._consumed.add(step_hash)
                return await self._suspend(step_hash, due)
            if request.kind == "send":
                ids = await self.send_events(step_hash, request.step_id, seq, request.events)
                self._consumed.add(step_hash)
                return ids
            memo = await self.invoke(step_hash, request.step_id, seq, ref=request.function,
                                     data=request.data or {}, timeout_ms=request.timeout_ms)
            self._consumed.add(step_hash)
            if memo.error is not None:
                raise StepError(request.step_id, memo.error)
            return await self._suspend(step_hash, memo.due_at)
        finally:
            self._in_flight -= 1
            self._maybe_unwind()

    async def _patch(self, request: StepRequest, step_hash: str) -> bool | None:
        """`step.patched` / `step.deprecate_patch`: the recorded answer, else True at the
        frontier of the run's history (new code reaching this point first) and False when
        recorded steps still lie ahead (the run went past this point under the old code).
        Patches take no position in the step order (`seq` is not advanced), so adding one
        does not make the recorded steps after it look moved."""
        memo = self.memos.get(step_hash)
        if memo is not None:
            if memo.kind != "patch":
                text = (f"non-determinism: step '{request.step_id}' was recorded as a "
                        f"'{memo.kind}' step and is now a patch; give the patch its own id")
                await self.warn(text)
                raise NonDeterminismError(text)
            self._take(memo)
            if request.deprecated:
                if memo.data is False:
                    await self.warn(
                        f"patch '{request.step_id}': this run took the old branch and the "
                        "code now has deprecate_patch (only the new branch); keep "
                        "`patched()` until `stepwell check` finds no such run")
                return None
            return bool(memo.data)
        if request.deprecated:
            return None
        await self._gate()
        await self._verify_lease()
        taken = self._unconsumed == 0
        now = self.now()
        await self.checkpoint(Memo(step_hash, request.step_id, "patch", self._seq, data=taken,
                                   started_at=now, ended_at=now))
        self._consumed.add(step_hash)
        return taken

    def _take(self, memo: Memo) -> None:
        """Count a recorded memo as replayed (once)."""
        if memo.hash not in self._consumed:
            self._consumed.add(memo.hash)
            self._unconsumed -= 1

    def _ran_in_parallel(self) -> bool:
        return ran_in_parallel(self.memos)

    async def _warn_new_step(self, step_id: str, seq: int) -> None:
        if self._warned_order:
            return
        recorded = sorted(self.memos.values(), key=lambda m: m.seq)
        missing = [m.step_id for m in recorded if m.seq < seq and m.hash not in self._consumed]
        if missing and not self._ran_in_parallel():
            # Set only once a warning is made: a step inserted before every recorded one
            # misses none, and the recorded step after it is then reported as moved.
            self._warned_order = True
            await self.warn(
                f"non-determinism: step '{step_id}' was reached before recorded step(s) "
                f"{missing[:3]} this time; the handler's step order changed")

    async def _replay(self, request: StepRequest, memo: Memo, seq: int, fingerprint: str) -> Any:
        if memo.kind != request.kind or (memo.fingerprint and fingerprint
                                         and memo.fingerprint != fingerprint):
            what = (f"was recorded as a '{memo.kind}' step and is now a '{request.kind}' step"
                    if memo.kind != request.kind else "is called with different arguments than "
                    "when it was recorded")
            text = (f"non-determinism: step '{request.step_id}' {what}; its recorded result "
                    "is not reused")
            await self.warn(text)
            raise NonDeterminismError(text)
        if memo.seq != seq and not self._warned_order and not self._ran_in_parallel():
            self._warned_order = True
            await self.warn(
                f"non-determinism: step '{request.step_id}' was reached at position {seq} but "
                f"recorded at position {memo.seq}; the handler's step order changed")
        now = self.now()
        if memo.sleeping(now) and memo.due_at is not None:
            if not self._may_park(memo.due_at):
                return await self._suspend(memo.hash, memo.due_at, timer=True)
            await self._park_until(memo.due_at)
            self.trace_woken([memo])
        if memo.pending:
            if memo.due_at is None or memo.due_at > now:
                return await self._suspend(memo.hash, memo.due_at)
            await self._gate()
            memo = await self.resolve_timeout(memo)
            if memo.pending:
                return await self._suspend(memo.hash, None)
        self._take(memo)
        if memo.error is not None:
            raise StepError(request.step_id, memo.error)
        return memo.data

    async def _run(self, request: StepRequest, step_hash: str, seq: int, fingerprint: str) -> Any:
        failures = len(self.failures.get(step_hash, ()))
        await self.flush_deferred()          # the previous step's memo, before this body
        started = self.now()
        token = current_attempt.set(failures)
        step_token = current_step.set(request.step_id)
        try:
            with collecting_usage() as usage:
                value = await self._call(request)
            data = to_json_value(value, what=f"step '{request.step_id}'")
        except Exception as exc:
            error = error_dict(exc, stack=user_traceback(exc))
            final = (isinstance(exc, NonRetriableError | NotSerializableError)
                     or failures >= self.spec.retries)
            due = None if final else self.retry_due(step_hash, failures + 1,
                                                    after_ms=_retry_after(exc, self.now()))
            await self._publisher.retract(request.step_id, failures)
            await self.record_failure(step_hash, request.step_id, failures, error, next_at=due,
                                      usage=usage)
            self._traced(request.step_id, failures, started, error, final=due is None)
            if due is None:
                await self.checkpoint(Memo(step_hash, request.step_id, "run", seq, error=error,
                                           fingerprint=fingerprint, attempts=failures + 1,
                                           started_at=started, ended_at=self.now()))
                self._consumed.add(step_hash)
                raise StepError(request.step_id, error) from None
            return await self._suspend(step_hash, due, timer=True)
        finally:
            current_attempt.reset(token)
            current_step.reset(step_token)
        memo = Memo(step_hash, request.step_id, "run", seq, data=data, fingerprint=fingerprint,
                    attempts=failures + 1, started_at=started, ended_at=self.now())
        # The only step running, with no tokens to record, in an `async def` handler (a plain
        # `def` one runs in a thread, so the loop is free at once and would commit it alone
        # anyway): its memo goes with the run's next transaction (RunDriver.defer_checkpoint).
        if (usage or self._in_flight != 1 or not self.fn.is_async
                or not self.defer_checkpoint(memo)):
            await self.checkpoint(memo, usage=usage)
        self._traced(request.step_id, failures, started, None, final=True)
        self._consumed.add(step_hash)
        return data

    def _traced(self, step_id: str, attempt: int, started: int,
                error: dict[str, Any] | None, *, final: bool) -> None:
        """The attempt's span (when tracing is configured; see runtime/tracing.py)."""
        tracing = self.host.tracing
        if tracing.enabled:
            tracing.step_attempt(self.state, self.fn.qualified_id, step_id, step_id, attempt,
                                 started, self.now(), error, final=final)

    async def _call(self, request: StepRequest) -> Any:
        fn = request.fn
        assert fn is not None
        live = self._live
        if live is not None:
            live.body_started()
        try:
            if inspect.iscoroutinefunction(fn):
                return await fn(*request.args, **request.kwargs)
            result = await self.host.step_pool.run(fn, *request.args, **request.kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result
        finally:
            if live is not None:
                live.body_ended()

    async def _sleep(self, request: StepRequest, step_hash: str, seq: int) -> None:
        now = self.now()
        due = request.until_ms if request.until_ms is not None else now + (request.sleep_ms or 0)
        memo = await self.sleep(step_hash, request.step_id, seq, due)
        self._consumed.add(step_hash)
        if due > now:
            if self._may_park(due):
                await self._park_until(due)
                self.trace_woken([memo])
            else:
                await self._suspend(step_hash, due, timer=True)
