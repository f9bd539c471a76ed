"""What every executor does to a run's stored state, whatever runs the handler.

A `RunDriver` holds one claimed run (its state and queue-item lease) and turns step outcomes
into transaction scripts: checkpoint a memo, record a failed attempt, register a wait, start a
child run, end the run, hand the item back. The in-process executor (`session.RunSession`) and
the HTTP executor for official-SDK apps (`remote.RemoteExecutor`) both build on it, so the two
share one state format and one set of guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from stepwell.core.backoff import retry_delay_ms
from stepwell.core.config import FunctionSpec
from stepwell.core.eventsize import check_event_size
from stepwell.core.models import (
    FUNCTION_INVOKED,
    Event,
    InvalidEventError,
    Memo,
    RunStatus,
    validate_event_payload,
)
from stepwell.core.routing import match_key, path_value
from stepwell.core.storage import StorageFailure
from stepwell.core.traceparent import stamp
from stepwell.runtime import admission, runlog, scripts, signals
from stepwell.runtime.scripts import Effects, Ending, LeaseLost, Placement
from stepwell.runtime.tracing import last_recorded, woken
from stepwell.sdk.errors import StepError
from stepwell.sdk.usage import ModelUsage
from stepwell.store.base import RunState, Tx, UsageRow, WaitRow

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from stepwell.runtime.clock import Clock
    from stepwell.runtime.interrupts import Interrupts
    from stepwell.runtime.stats import Stats
    from stepwell.runtime.streams import StreamHub
    from stepwell.runtime.threads import StepThreads
    from stepwell.runtime.tracing import NoTracing

R = TypeVar("R")
FUNCTION_KEY = "__function__"      # failure counters of code outside steps (one per unit)
INVOKE_TIMEOUT_ERROR = {
    "name": "InngestInvokeTimeoutError", "stack": "",
    "message": "Timed out waiting for invoked function to complete"}
log = logging.getLogger("stepwell.run")
MAX_INVOKE_DEPTH = 100          # nested invocations (a run invoking, invoked by a run ...)
# Events sent by runs started by events sent by runs ...: an event a run sends is one
# generation past the run's trigger. A send past the limit fails its step, so a loop of
# functions sending each other's events (A -> B -> A ...) ends instead of running forever.
MAX_EVENT_GENERATION = 100


class Target(Protocol):
    """Anything invocable: a native or a remote function."""

    @property
    def spec(self) -> FunctionSpec: ...


class Host(Protocol):
    """What an executor needs from the engine."""

    clock: Clock
    owner: str
    stats: Stats
    tracing: NoTracing
    retry_interval_ms: int | None
    check_determinism: bool
    step_pool: StepThreads
    handler_pool: Executor
    interrupts: Interrupts
    streams: StreamHub

    @property
    def routing(self) -> scripts.Routing: ...

    def lease_until(self) -> int: ...

    def may_park(self, when: int) -> bool: ...

    async def park_until(self, when: int) -> None: ...

    async def commit(self, fn: Callable[[Tx, Placement, Effects], R]) -> R: ...

    async def read(self, fn: Callable[[Tx], R]) -> R: ...

    def find_function(self, ref: object) -> Target | None: ...


class RunDriver:
    """One claimed run: its state, its lease, and the scripts that change it."""

    def __init__(self, host: Host, spec: FunctionSpec, state: RunState,
                 item_id: int | None) -> None:
        self.host = host
        self.spec = spec
        self.state = state
        self.run_id = state.run.id
        self.item_id = item_id
        self.memos = state.memos
        self.failures = state.failures
        self.loaded_at = host.clock.now()
        self._sleeps_traced: set[str] = set()      # sleeps whose span this execution emitted
        # A finished step's memo waiting for the run's next transaction (`defer_checkpoint`),
        # and the task committing it alone when no transaction followed at once.
        self._deferred: Memo | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._flush_error: Exception | None = None
        self._closed = False           # the execution ended (`settle_writes`)

    def now(self) -> int:
        return self.host.clock.now()

    @property
    def first_event(self) -> dict[str, Any]:
        return self.state.events[0].to_dict() if self.state.events else {}

    async def write(self, fn: Callable[[Tx, Placement, Effects], R], *,
                    held: bool = True) -> R:
        """Commit `fn` for this run. `held`: first renew this worker's lease (compare-and-set;
        LeaseLost if it is gone). A memo left by `defer_checkpoint` is written in the same
        transaction, before `fn`, and always under the lease."""
        await self._settle_flush()
        return await self._write(fn, held=held)

    async def _write(self, fn: Callable[[Tx, Placement, Effects], R], *, held: bool) -> R:
        memo, self._deferred = self._deferred, None
        if memo is None and not held:
            return await self.host.commit(fn)
        owner, until, item, run_id = (self.host.owner, self.host.lease_until(), self.item_id,
                                      self.run_id)

        failed: list[BaseException] = []

        def script(tx: Tx, place: Placement, effects: Effects) -> R:
            try:
                scripts.hold(tx, item, owner, until)
                if memo is not None and not tx.insert_memo(run_id, memo):
                    raise LeaseLost(
                        f"step {memo.step_id} of run {run_id} was committed elsewhere")
                return fn(tx, place, effects)
            except BaseException as exc:
                failed.append(exc)
                raise

        try:
            value = await self.host.commit(script)
        except LeaseLost:
            raise
        except BaseException as exc:
            # Rolled back for sure only if the script itself raised or the database failed;
            # after a cancellation or a failure acting on the effects it may be committed,
            # and writing the memo again would fail its insert-once.
            if (memo is not None and self._deferred is None
                    and (failed or isinstance(exc, StorageFailure))):
                self._deferred = memo        # not written: the run's next transaction takes it
            raise
        if memo is not None:
            self._count_committed(memo)
        return value

    def defer_checkpoint(self, memo: Memo) -> bool:
        """Leave a finished `run` step's memo to the run's next transaction instead of giving
        it one of its own, when the handler goes straight on to one: its end (the last step
        of most functions), a sleep, a wait, a retry. If the handler does anything else first
        (awaits something that is not a step), the memo is committed alone as soon as it
        yields, and before any other step body starts (`flush_deferred`): a step whose
        successor has started is never run again for want of its memo. Returns False (and
        defers nothing) when another memo is still waiting; the caller then checkpoints."""
        if self._deferred is not None or self._flushing is not None:
            return False
        self._deferred = memo
        self.memos[memo.hash] = memo
        asyncio.get_running_loop().call_soon(self._flush_later)
        return True

    async def flush_deferred(self) -> None:
        """Commit a deferred memo now, if one waits (before a step body starts)."""
        await self._settle_flush()
        await self._commit_deferred()

    async def _commit_deferred(self) -> None:
        """The deferred memo, if one waits, in a transaction of its own (under the lease)."""
        if self._deferred is not None:
            await self._write(_nothing, held=False)

    def _flush_later(self) -> None:
        """The handler yielded with a memo still deferred: commit it alone."""
        if self._deferred is not None and self._flushing is None and not self._closed:
            self._flushing = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        try:
            await self._commit_deferred()        # unless a write took it meanwhile
        except Exception as exc:
            self._flush_error = exc        # raised where the run next writes
        finally:
            self._flushing = None

    async def settle_writes(self, *, flush: bool) -> None:
        """End of the execution: wait for a memo being committed alone, and (`flush`) commit
        one still deferred (its step finished; the execution may be ending on an engine fault
        before any other write), so that nothing of the run outlives its session. Failures
        are not raised: the execution is over, and a memo not written is simply not there.
        Not `flush` when the execution was cancelled (the engine is stopping)."""
        self._closed = True
        await self._await_flush()
        if flush:
            with contextlib.suppress(Exception):
                await self._commit_deferred()
        self._deferred = None
        self._flush_error = None

    async def _await_flush(self) -> None:
        """Wait for a memo being committed alone (not cancelling it if the waiter is)."""
        while self._flushing is not None:
            await asyncio.wait([self._flushing])

    async def _settle_flush(self) -> None:
        """Wait for a memo being committed alone, and raise what stopped it."""
        await self._await_flush()
        if self._flush_error is not None:
            error, self._flush_error = self._flush_error, None
            raise error

    def _count_committed(self, memo: Memo) -> None:
        stats = self.host.stats
        stats.steps_committed[memo.kind] += 1
        if memo.kind == "run" and memo.ended_at is not None:
            stats.step_took(self.spec.qualified_id,
                            max(0, memo.ended_at - memo.started_at) / 1000)

    def _usage_rows(self, step_hash: str, step_id: str, attempt: int,
                    usage: Mapping[str, ModelUsage] | None) -> list[UsageRow]:
        if not usage:
            return []
        now = self.now()
        return [UsageRow(self.run_id, step_hash, attempt, u.model, step_id, u.input_tokens,
                         u.output_tokens, u.calls, now) for u in usage.values()]

    async def checkpoint(self, memo: Memo,
                         extra: Callable[[Tx, Placement, Effects], None] | None = None, *,
                         usage: Mapping[str, ModelUsage] | None = None) -> None:
        """Commit a step's memo (and `extra` effects, and the tokens its attempt spent on
        models) once; LeaseLost if it already exists."""
        run_id = self.run_id
        rows = self._usage_rows(memo.hash, memo.step_id, max(0, memo.attempts - 1), usage)

        def script(tx: Tx, place: Placement, effects: Effects) -> bool:
            if not tx.insert_memo(run_id, memo):
                return False
            if extra is not None:
                extra(tx, place, effects)
            if rows:
                tx.insert_model_usage(rows)
            return True

        if not await self.write(script):
            raise LeaseLost(f"step {memo.step_id} of run {run_id} was committed elsewhere")
        if rows:
            self.host.stats.tokens_used(self.spec.qualified_id, rows)
        self.memos[memo.hash] = memo
        self._count_committed(memo)

    async def record_failure(self, step_hash: str, step_id: str, attempt: int,
                             error: dict[str, Any], *, next_at: int | None,
                             usage: Mapping[str, ModelUsage] | None = None) -> None:
        """Record a failed attempt (0-based) and log it; `next_at`: when the next attempt may
        start, None when none follows. The tokens the attempt spent are recorded with it."""
        run_id, now = self.run_id, self.now()
        rows = self._usage_rows(step_hash, step_id, attempt, usage)

        def script(tx: Tx, place: Placement, effects: Effects) -> None:
            tx.insert_step_failure(run_id, step_hash, step_id, attempt, error, now)
            if rows:
                tx.insert_model_usage(rows)

        await self.write(script)
        if rows:
            self.host.stats.tokens_used(self.spec.qualified_id, rows)
        self.host.stats.step_attempts_failed += 1
        runlog.attempt_failed(run_id, self.spec.public_id, step_id, attempt, self.spec.retries,
                              error, now=now, next_at=next_at)
        self.failures.setdefault(step_hash, []).append(
            {"attempt": attempt, "error": error, "at": now, "step_id": step_id})

    def retry_due(self, key: str, failures: int, *, after_ms: int | None = None) -> int:
        """When the next attempt may start: a requested time, else backoff with jitter."""
        now = self.now()
        if after_ms is not None:
            return max(now, after_ms)
        interval = self.host.retry_interval_ms
        if interval is not None:
            return now + interval * failures       # `--retry-interval`: linear, for dev loops
        return now + retry_delay_ms(failures, seed=f"{self.run_id}:{key}")

    async def end(self, status: RunStatus, *, output: Any = None,
                  error: dict[str, Any] | None = None,
                  event_error: dict[str, Any] | None = None) -> None:
        run = self.state.run
        ending = Ending(run.id, run.function_id, status, output=output, error=error,
                        parent_run_id=run.parent_run_id, parent_step=run.parent_step,
                        event=self.first_event or None, event_error=event_error)
        now, routing = self.now(), self.host.routing
        ended = False
        with contextlib.suppress(LeaseLost):
            ended = await self.write(
                lambda tx, place, effects: scripts.end_run(tx, ending, now, place, routing,
                                                           effects))
        if ended and self.host.tracing.enabled:
            self.host.tracing.run_ended(self.state, run.function_id, status, now, error)

    def trace_scheduled(self, memo: Memo, **details: str | None) -> None:
        """A sleep, wait or invoke just recorded, in the run's trace (runtime/tracing.py)."""
        if self.host.tracing.enabled:
            self.host.tracing.wait_scheduled(self.state, memo, details)

    def trace_woken(self, memos: list[Memo] | None = None) -> None:
        """The spans of the sleeps this execution is the first to pass: `memos` (it slept
        through them), or those that woke before it loaded the run (`tracing.woken`)."""
        tracing = self.host.tracing
        if tracing.enabled:
            for memo in woken(self.state, self.loaded_at) if memos is None else memos:
                if memo.hash not in self._sleeps_traced:
                    self._sleeps_traced.add(memo.hash)
                    tracing.wait_resolved(self.state, memo)

    def trace_due_sleeps(self, *, handing_back: bool) -> None:
        """The sleeps that woke while this execution held the run, not passed by it yet:
        before a call to an SDK app, all of them (the app passes them now); when the run is
        handed back, those the next execution would take for passed, since this one
        recorded something after their wake (see `tracing.woken`)."""
        if not self.host.tracing.enabled:
            return
        now, since = self.now(), last_recorded(self.state)
        self.trace_woken([m for m in self.memos.values() if m.kind == "sleep"
                          and m.due_at is not None and self.loaded_at < m.due_at <= now
                          and (not handing_back or since >= m.due_at)])

    def trace_context(self) -> str | None:
        """The run span's `traceparent` for the events this run sends and the runs it
        invokes, so that they join its trace (None when tracing is not configured)."""
        trace = self.host.tracing.run_trace(self.state)
        return None if trace is None else trace.traceparent

    def function_unit(self) -> str:
        """The failure counter of the current unit of work outside steps. As in Inngest, each
        new unit (the code after the last recorded step) starts again at attempt 0: an early
        transient error does not use up the retries of code that runs later. Steps recorded so
        far identify the unit (a retried unit records none)."""
        return f"{FUNCTION_KEY}:{len(self.memos)}"

    def function_attempt(self) -> int:
        """How many times the current unit of work has failed (`ctx.attempt`)."""
        return len(self.failures.get(self.function_unit(), ()))

    async def retry_function(self, error: dict[str, Any], *, after_ms: int | None = None,
                             event_error: dict[str, Any] | None = None,
                             retry: bool = True) -> None:
        """An error outside any step: retry the current unit of work like a step, or fail the
        run once its retries are used up (or at once when `retry` is False)."""
        unit = self.function_unit()
        failures = self.function_attempt()
        if not retry or failures >= self.spec.retries:
            await self.end("failed", error=error, event_error=event_error)
            return
        due = self.retry_due(unit, failures + 1, after_ms=after_ms)
        with contextlib.suppress(LeaseLost):
            await self.record_failure(unit, FUNCTION_KEY, failures, error, next_at=due)
            await self.release(due, timer=True)

    async def release(self, due: int | None, *, timer: bool = False) -> None:
        """Hand the queue item back: deleted (nothing scheduled) or due again at `due`; `timer`
        when only time will resume the run (see `Tx.release_item`)."""
        owner, item, now = self.host.owner, self.item_id, self.now()
        if item is None:
            await self.flush_deferred()
            return
        await self.write(lambda tx, place, effects: tx.release_item(
            item, owner, due, now, timer=timer), held=False)

    async def warn(self, text: str) -> None:
        run_id = self.run_id
        log.warning("run %s: %s", run_id, text)
        await self.write(lambda tx, place, effects: tx.add_run_warning(run_id, text),
                         held=False)

    async def resolve_timeout(self, memo: Memo) -> Memo:
        """A wait or invoke whose time is up: resolve it (unless an event won the race)."""
        run_id, step_hash, now = self.run_id, memo.hash, self.now()
        outcome: dict[str, Any] = ({"data": None} if memo.kind == "wait"
                                   else {"error": dict(INVOKE_TIMEOUT_ERROR)})

        def script(tx: Tx, place: Placement, effects: Effects) -> Memo | None:
            if tx.resolve_memo(run_id, step_hash, outcome, now):
                tx.delete_step_wait(run_id, step_hash)
                return None
            state = tx.load_run_state(run_id)
            return None if state is None else state.memos.get(step_hash)

        fresh = await self.write(script, held=False)
        if fresh is None:
            memo.pending, memo.data, memo.error = False, outcome.get("data"), outcome.get("error")
            memo.ended_at = now
            if self.host.tracing.enabled:
                self.host.tracing.wait_resolved(self.state, memo)
            return memo
        self.memos[step_hash] = fresh
        return fresh

    async def sleep(self, step_hash: str, step_id: str, seq: int, due: int) -> Memo:
        memo = Memo(step_hash, step_id, "sleep", seq, due_at=due, started_at=self.now(),
                    ended_at=due)
        await self.checkpoint(memo)
        self.trace_scheduled(memo)
        return memo

    async def wait_for_event(self, step_hash: str, step_id: str, seq: int, *, event_name: str,
                             timeout_ms: int, match_path: str | None,
                             condition: str | None) -> int:
        """Register a wait; returns when it times out."""
        now = self.now()
        due = now + timeout_ms
        event = self.first_event
        key = None if match_path is None else match_key(match_path,
                                                        path_value(event, match_path))
        wait = WaitRow(run_id=self.run_id, kind="wait", event_name=event_name, expires_at=due,
                       step_hash=step_hash, match_key=key, expr=condition, event_ctx=event)
        memo = Memo(step_hash, step_id, "wait", seq, due_at=due, started_at=now, pending=True)
        await self.checkpoint(memo, lambda tx, place, effects: tx.insert_wait(wait))
        self.trace_scheduled(memo, **{"wait.event": event_name, "wait.match": match_path,
                                      "wait.if": condition})
        return due

    async def wait_for_signal(self, step_hash: str, step_id: str, seq: int, *, signal: str,
                              timeout_ms: int, conflict: str) -> int | None:
        """Hold the signal's name until it is sent or the timeout passes (returned), or, when
        another wait holds it and `conflict` is "fail", fail the step at once (None). The
        conflict check and the registration are one transaction, so two waits never both
        believe they hold a name on one database."""
        now, run_id = self.now(), self.run_id
        due = now + timeout_ms
        wait = signals.signal_wait(run_id, step_hash, signal, due)
        pending = Memo(step_hash, step_id, "wait", seq, due_at=due, started_at=now, pending=True)

        def script(tx: Tx, place: Placement, effects: Effects) -> Memo | None:
            holders = signals.conflicts(tx, wait, now)
            memo = pending
            if holders and conflict == "fail":
                memo = Memo(step_hash, step_id, "wait", seq, started_at=now, ended_at=now,
                            error=signals.conflict_error(signal, holders))
            if not tx.insert_memo(run_id, memo):
                return None
            if memo is pending:
                signals.hold(tx, wait, holders)
            return memo

        memo = await self.write(script)
        if memo is None:
            raise LeaseLost(f"step {step_id} of run {run_id} was committed elsewhere")
        self.memos[step_hash] = memo
        self.trace_scheduled(memo, **{"wait.signal": signal})
        return due if memo.pending else None

    async def send_events(self, step_hash: str, step_id: str, seq: int,
                          raw_events: list[dict[str, Any]]) -> list[str]:
        now = self.now()
        events = []
        try:
            for raw in raw_events:
                validate_event_payload(raw)
                check_event_size(raw)
                event = Event.from_dict(raw)
                event.id = event.id or scripts.new_id()
                event.ts = event.ts or now
                events.append(event)
            stamp(events, self.trace_context())
        except InvalidEventError as exc:
            # Deterministic: the same events would be refused again, so the step fails now.
            error = {"name": "InvalidEventError", "message": f"step '{step_id}': {exc}",
                     "stack": ""}
            await self.checkpoint(Memo(step_hash, step_id, "send", seq, error=error,
                                       started_at=now, ended_at=now))
            raise StepError(step_id, error) from None
        trigger_ids = self.state.run.event_ids
        generation = 1 + await self.host.read(lambda tx: tx.event_generation(trigger_ids))
        if generation > MAX_EVENT_GENERATION:
            error = self.event_loop_error(step_id, [e.name for e in events])
            await self.checkpoint(Memo(step_hash, step_id, "send", seq, error=error,
                                       started_at=now, ended_at=now))
            raise StepError(step_id, error)
        ids = [e.id for e in events]
        memo = Memo(step_hash, step_id, "send", seq, data=ids, started_at=now, ended_at=now)
        await self.checkpoint(memo, lambda tx, place, effects: scripts.store_emitted(
            tx, events, now, effects, generation=generation))
        return ids

    def event_loop_error(self, step_id: str, sent: list[str]) -> dict[str, Any]:
        """The error of a send past MAX_EVENT_GENERATION: not retried (the run's trigger
        would be just as deep on the next attempt)."""
        trigger = self.state.events[0].name if self.state.events else "?"
        return {"name": "EventLoopError", "stack": "",
                "message": f"step '{step_id}': not sending {', '.join(map(repr, sent))}: "
                           f"this run of {self.spec.qualified_id!r} was triggered by "
                           f"{trigger!r}, the end of a chain of {MAX_EVENT_GENERATION} events "
                           "each sent by a run the previous one started; at most "
                           f"{MAX_EVENT_GENERATION} generations are allowed, so functions "
                           "that send each other's events (A -> B -> A ...) stop here; "
                           "end the loop with a condition (docs: limits-engine.md)"}

    async def _invoke_depth(self) -> int:
        """How many invocations deep this run is (its invoking ancestors, counted up to the
        limit: one read per level, and most runs have no parent)."""
        parent = self.state.run.parent_run_id

        def count(tx: Tx) -> int:
            depth, current = 0, parent
            while current is not None and depth < MAX_INVOKE_DEPTH:
                row = tx.get_run(current)
                depth += 1
                current = row.parent_run_id if row is not None else None
            return depth

        return 0 if parent is None else await self.host.read(count)

    def function_not_found(self, step_id: str, ref: object) -> dict[str, Any]:
        """The error of an invoke whose target does not exist."""
        return {"name": "FunctionNotFoundError", "stack": "",
                "message": f"step '{step_id}': no function {ref!r} is registered (give a "
                           "function object, 'fn-id', 'app-id/fn-id' or an SDK app's "
                           "composite id)"}

    async def invoke(self, step_hash: str, step_id: str, seq: int, *, ref: object,
                     data: dict[str, Any], timeout_ms: int | None) -> Memo:
        """Start the target as a child run (its end resolves this step), or, when no such
        function exists, record the step as failed. Returns the memo."""
        now = self.now()
        target = self.host.find_function(ref)
        error: dict[str, Any] | None = None
        if target is None:
            error = self.function_not_found(step_id, ref)
        elif await self._invoke_depth() >= MAX_INVOKE_DEPTH:
            # A function invoking itself (or A invoking B invoking A) would otherwise nest
            # runs without end, each parent waiting on its child.
            error = {"name": "InvokeDepthError", "stack": "",
                     "message": f"step '{step_id}': this run is {MAX_INVOKE_DEPTH} invocations "
                                f"deep; at most {MAX_INVOKE_DEPTH} nested invokes are allowed"}
        if error is not None:
            memo = Memo(step_hash, step_id, "invoke", seq, error=error, started_at=now,
                        ended_at=now)
            await self.checkpoint(memo)
            self.trace_scheduled(memo)
            return memo
        assert target is not None
        due = None if timeout_ms is None else now + timeout_ms
        memo = Memo(step_hash, step_id, "invoke", seq, due_at=due, started_at=now, pending=True)
        child = Event(name=FUNCTION_INVOKED, data=dict(data), id=scripts.new_id(), ts=now)
        stamp([child], self.trace_context())
        spec, run_id, routing = target.spec, self.run_id, self.host.routing

        def start_child(tx: Tx, place: Placement, effects: Effects) -> None:
            tx.insert_event(child, now, now, processed=True)
            admission.start_run(tx, spec, [child], now, place, effects, routing=routing,
                                parent=(run_id, step_hash))

        await self.checkpoint(memo, start_child)
        self.trace_scheduled(memo, **{"invoke.function": spec.qualified_id})
        return memo


def _nothing(tx: Tx, place: Placement, effects: Effects) -> None:
    """A script that writes nothing of its own (a deferred memo, or the lease, goes with it)."""
