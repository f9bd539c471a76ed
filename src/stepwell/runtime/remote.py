"""The HTTP executor: drives functions served by the official Inngest SDKs.

Each call POSTs the run's event(s) and resolved memos to the app; the SDK replays its handler
and answers with the function's result (200), the opcodes of the steps it reached (206), or an
error. Opcodes map onto the same state transitions the in-process executor uses (`RunDriver`):
StepRun/StepFailed commit a memo, StepError schedules a retry, Sleep/WaitForEvent/InvokeFunction/
WaitForSignal suspend the run, Gateway/AIGateway requests are made by the server (`gateway`),
StepPlanned steps are executed in parallel by targeted calls. See
shared/reference/inngest-protocol.md, sections 2-4.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from stepwell.core.canonical import canonical_json
from stepwell.core.config import FunctionSpec
from stepwell.core.models import INPUT_PREFIX, Memo
from stepwell.core.protocol import (
    Op,
    ProtocolError,
    invoke_request,
    parse_ops,
    sdk_error,
    sign,
    signal_request,
    sleep_until,
    steps_map,
    wait_request,
)
from stepwell.core.traceparent import TRACEPARENT
from stepwell.core.urlpolicy import AppUrlNotAllowed, AppUrlPolicy
from stepwell.runtime import checkpoint, gateway
from stepwell.runtime.appconn import Reply, reply_text, unwrap_streamed
from stepwell.runtime.driver import FUNCTION_KEY, Host, RunDriver
from stepwell.runtime.scripts import LeaseLost
from stepwell.runtime.sdkclient import AppClients
from stepwell.runtime.tracing import call_traceparent
from stepwell.store.base import RunState

log = logging.getLogger("stepwell.remote")
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_CALLS_PER_EXECUTION = 1000


@dataclass(frozen=True)
class RemoteFunction:
    """A function served by an SDK app at `url` (its step URL)."""

    spec: FunctionSpec
    url: str

    @property
    def qualified_id(self) -> str:
        return self.spec.qualified_id


@dataclass(frozen=True)
class RemoteSettings:
    """How this server calls SDK apps."""

    signing_key: str | None = None
    server_kind: str = "dev"
    timeout_s: float = 300.0
    app_urls: AppUrlPolicy | None = None     # None: any URL (see core.urlpolicy)
    checkpointing: bool = True       # offer SDK checkpointing (ctx.fn_id / ctx.qi_id)


@dataclass
class CallResult:
    """One SDK response, classified."""

    kind: str                        # done | ops | error
    output: Any = None
    ops: list[Op] | None = None
    error: dict[str, Any] | None = None
    retry: bool = True               # False: the SDK sent `x-inngest-no-retry: true`
    retry_at: int | None = None
    # The SDK's own error body (a JSON object), kept verbatim as the failed run's output.
    output_error: dict[str, Any] | None = None
    # The call's span (tracing configured) and start: the steps it ran are its children.
    span: Any = None
    started: int = 0


def with_step(url: str, step_id: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "stepId"]
    query.append(("stepId", step_id))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _retry_after(value: str | None, now: int) -> int | None:
    if not value:
        return None
    if value.strip().isdigit():
        return now + int(value.strip()) * 1000
    try:
        return int(email.utils.parsedate_to_datetime(value).timestamp() * 1000)
    except (TypeError, ValueError):
        pass
    try:
        from stepwell.core.durations import parse_timestamp_ms

        return parse_timestamp_ms(value)
    except ValueError:
        return None


class RemoteExecutor(RunDriver):
    """One claimed run of an SDK-served function."""

    def __init__(self, host: Host, fn: RemoteFunction, state: RunState, item_id: int | None,
                 client: httpx.AsyncClient, settings: RemoteSettings,
                 inflight: checkpoint.Inflight | None = None,
                 calls: AppClients | None = None) -> None:
        super().__init__(host, fn.spec, state, item_id)
        self.fn = fn
        self.client = client              # server-made requests (step.fetch, step.ai.infer)
        self.calls = calls                # calls to the app: bounded and fair per app
        self.settings = settings
        self._dues: list[int | None] = []
        # Set: discovery calls offer the SDK checkpointing (see runtime/checkpoint.py).
        self.inflight = inflight if settings.checkpointing and item_id is not None else None
        self._in_flight: dict[str, asyncio.Task[CallResult]] = {}   # targeted calls
        self._planned: dict[str, Op] = {}
        # The checkpointing call in progress: its span and when its last step ended.
        self._checkpointed: tuple[Any, int] | None = None

    async def execute(self) -> None:
        # A started run keeps its app's run slot until it suspends or ends (sdkclient).
        slot = (contextlib.nullcontext() if self.calls is None
                else self.calls.run_slot(self.fn.url))
        self.trace_woken()
        async with slot:
            await self._execute()

    async def _execute(self) -> None:
        try:
            await self._drive()
        except LeaseLost:
            log.info("run %s: lease lost (cancelled or reclaimed); stopping", self.run_id)
        finally:
            for task in self._in_flight.values():
                task.cancel()

    async def _drive(self) -> None:
        """Discovery calls and the targeted calls of parallel steps, until the run ends or
        has to wait. As in Inngest, a discovery call follows a completed round of parallel
        steps, or each finished step of a round whose ops ask for `parallelMode: "race"`."""
        for _ in range(MAX_CALLS_PER_EXECUTION):
            edited = None if self._in_flight else self._edited_step()
            result = await (self._call(edited, disable_immediate=True) if edited is not None
                            else self._call("step", disable_immediate=bool(self._in_flight)))
            try:
                proceed = await self._handle(result)
                if proceed and self._in_flight:
                    proceed = await self._await_targeted()
            except ProtocolError as exc:
                if await self._settle_in_flight():
                    await self.retry_function({"name": "ProtocolError", "message": str(exc),
                                               "stack": ""})
                return
            if not proceed:
                return
            if self._dues and not self._in_flight:
                dues = [d for d in self._dues if d is not None]
                self.trace_due_sleeps(handing_back=True)
                await self.release(min(dues) if dues else None)
                return
        # A step-per-call loop this long means the app never finishes: let others run.
        if await self._settle_in_flight():
            await self.release(self.now())

    async def _handle(self, result: CallResult) -> bool:
        """Apply one discovery response; False once the run has ended or was handed back."""
        if result.kind == "done":
            self._cancel_in_flight()
            await self.end("completed", output=result.output)
            return False
        if result.kind == "error":
            assert result.error is not None
            # Targeted calls still running commit their results first.
            if not await self._settle_in_flight():
                return False
            await self.retry_function(result.output_error or result.error,
                                      after_ms=result.retry_at, retry=result.retry,
                                      event_error=result.error)
            return False
        for op in result.ops or []:
            if op.op == "StepPlanned":
                if op.id not in self._in_flight and op.id not in self.memos:
                    # Parallel steps: each runs in its own targeted call, concurrently.
                    self._in_flight[op.id] = asyncio.create_task(
                        self._call(op.id, disable_immediate=True))
                    self._planned[op.id] = op
            elif op.op == "RunComplete":
                await self.end("completed", output=op.data)
                return False
            else:
                await self._apply(op, result, no_retry=not result.retry)
        return True

    def _edited_step(self) -> str | None:
        """A step a rerun gave new input that has not run yet: it is called directly (as
        Inngest does), since a checkpointing SDK would take its input for a result."""
        for memo in self.memos.values():
            target = memo.hash.removeprefix(INPUT_PREFIX)
            if memo.kind == "input" and target not in self.memos:
                return target
        return None

    async def _await_targeted(self) -> bool:
        """Wait for the targeted calls in flight (for the first of them when one asks for race
        mode) and apply what they answered; False once the run has ended."""
        race = any(op.opts.get("parallelMode") == "race" for op in self._planned.values()
                   if op.id in self._in_flight)
        # A run that must wait anyway (a sleep, a wait, a retry) lets every branch finish.
        when = (asyncio.FIRST_COMPLETED if race and not self._dues else asyncio.ALL_COMPLETED)
        done, _ = await asyncio.wait(self._in_flight.values(), return_when=when)
        finished = [h for h, task in self._in_flight.items() if task in done]
        for step_hash in finished:
            task = self._in_flight.pop(step_hash)
            op = self._planned.pop(step_hash)
            if not await self._targeted(op, task.result()):
                return False
        return True

    async def _settle_in_flight(self) -> bool:
        """Let every targeted call in flight finish and record its outcome; False once one
        of them ended the run."""
        while self._in_flight:
            done, _ = await asyncio.wait(self._in_flight.values())
            for step_hash in [h for h, t in self._in_flight.items() if t in done]:
                task = self._in_flight.pop(step_hash)
                op = self._planned.pop(step_hash)
                if not await self._targeted(op, task.result()):
                    return False
        return True

    async def _targeted(self, op: Op, sub: CallResult) -> bool:
        """Apply the answer of a targeted call; False once it ended the run. An error answer
        (not a StepError op) is the call's own failure, as in Inngest: retried as that unit of
        work while retries are left, else it fails the run with the SDK's error body."""
        if sub.kind == "done":
            # The function returned from a targeted call: as in Inngest, the run is complete.
            self._cancel_in_flight()
            await self.end("completed", output=sub.output)
            return False
        if sub.kind == "ops":
            for inner in sub.ops or []:
                if inner.op not in ("StepPlanned", "RunComplete"):
                    await self._apply(inner, sub, no_retry=not sub.retry)
        elif sub.kind == "error":
            assert sub.error is not None
            attempt = self._attempt(op.id)
            if sub.retry and attempt < self.spec.retries:
                due = self.retry_due(op.id, attempt + 1, after_ms=sub.retry_at)
                await self.record_failure(op.id, op.display_name or op.id, attempt, sub.error,
                                          next_at=due)
                self._traced(sub, op, attempt, sub.error, final=False)
                self._dues.append(due)
                return True
            self._traced(sub, op, attempt, sub.error, final=True)
            self._cancel_in_flight()
            await self.end("failed", error=sub.output_error or sub.error,
                           event_error=sub.error)
            return False
        return True

    def _cancel_in_flight(self) -> None:
        for task in self._in_flight.values():
            task.cancel()
        self._in_flight.clear()
        self._planned.clear()

    def _seq(self) -> int:
        return len(self.memos)

    def function_not_found(self, step_id: str, ref: object) -> dict[str, Any]:
        """Inngest's own error for an invoke of an unknown function, which SDK code may test."""
        return {"name": "Error", "message": f"could not find function with ID: {ref}"}

    def _traced(self, call: CallResult | None, op: Op, attempt: int,
                error: dict[str, Any] | None, *, final: bool, started: int | None = None) -> None:
        """The span of a step attempt the SDK reported, under the span of the call it ran in
        (from the call's start, or `started`, to now), as native attempts are traced."""
        tracing = self.host.tracing
        if tracing.enabled and call is not None:
            tracing.step_attempt(self.state, self.fn.qualified_id, op.id,
                                 op.display_name or op.name or op.id, attempt,
                                 call.started if started is None else started, self.now(),
                                 error, final=final, parent=call.span)

    async def _apply(self, op: Op, call: CallResult | None = None, *,
                     no_retry: bool = False) -> None:
        existing = self.memos.get(op.id)
        if existing is not None:
            if op.op in ("StepRun", "Step") and existing.kind == "run" and not existing.pending:
                # A result already committed through a checkpoint, reported again because
                # the SDK did not get that checkpoint's answer: stored once.
                return
            await self._replayed(existing)
            return
        try:
            if op.op in ("StepRun", "Step"):
                attempt = self._attempt(op.id)
                await self.checkpoint(Memo(op.id, op.display_name or op.id, "run", self._seq(),
                                           data=op.data, attempts=attempt + 1,
                                           started_at=self.now(), ended_at=self.now()))
                self._traced(call, op, attempt, None, final=True)
            elif op.op == "StepError":
                # `x-inngest-no-retry: true` on the response fails the step at once.
                await self._step_error(op, op.error or {}, call, retry=not no_retry)
            elif op.op == "StepFailed":
                await self._step_error(op, op.error or {}, call, retry=False)
            elif op.op == "Sleep":
                due = sleep_until(op, self.now())
                await self.sleep(op.id, op.display_name or op.id, self._seq(), due)
                if due > self.now():
                    self._dues.append(due)
            elif op.op == "WaitForEvent":
                event, timeout_ms, path, condition = wait_request(op)
                self._dues.append(await self.wait_for_event(
                    op.id, op.display_name or op.id, self._seq(), event_name=event,
                    timeout_ms=timeout_ms, match_path=path, condition=condition))
            elif op.op == "InvokeFunction":
                target, data, invoke_timeout = invoke_request(op)
                memo = await self.invoke(op.id, op.display_name or op.id, self._seq(),
                                         ref=target, data=data, timeout_ms=invoke_timeout)
                if memo.pending:
                    self._dues.append(memo.due_at)
            elif op.op == "WaitForSignal":
                signal, timeout_ms, conflict = signal_request(op)
                held = await self.wait_for_signal(op.id, op.display_name or op.id, self._seq(),
                                                  signal=signal, timeout_ms=timeout_ms,
                                                  conflict=conflict)
                if held is not None:
                    self._dues.append(held)
            elif op.op in ("Gateway", "AIGateway"):
                await self._gateway(op, call)
            else:
                raise ProtocolError(f"opcode {op.op} is not supported by stepwell")
        except ProtocolError as exc:
            error = {"name": "ProtocolError", "message": str(exc), "stack": ""}
            await self.checkpoint(Memo(op.id, op.display_name or op.id, "run", self._seq(),
                                       error=error, started_at=self.now(),
                                       ended_at=self.now()))

    async def _gateway(self, op: Op, call: CallResult | None) -> None:
        """Make the request a Gateway/AIGateway op asks for and save the response as the step's
        result; a failed request is a step error, retried with the function's retries and
        backoff (the SDK reports the op again on the next call, and it is made again)."""
        started = self.now()
        perform = gateway.fetch if op.op == "Gateway" else gateway.infer
        outcome = await perform(self.client, op, self.settings.app_urls)
        if outcome.error is not None:
            await self._step_error(op, outcome.error, call, retry=outcome.retry,
                                   started=started)
            return
        usage = gateway.infer_usage(op, outcome.data) if op.op == "AIGateway" else None
        attempt = self._attempt(op.id)
        await self.checkpoint(Memo(op.id, op.display_name or op.id, "run", self._seq(),
                                   data=outcome.data, attempts=attempt + 1,
                                   started_at=started, ended_at=self.now()), usage=usage)
        self._traced(call, op, attempt, None, final=True, started=started)

    async def _replayed(self, memo: Memo) -> None:
        """The SDK reported a step we already know (it is still sleeping, waiting or invoking):
        keep waiting, or resolve a wait/invoke whose time is up and go on. A step whose result
        the SDK was already given must not come back: that app is not following the protocol."""
        now = self.now()
        if memo.sleeping(now):
            self._dues.append(memo.due_at)
        elif memo.pending:
            if memo.due_at is None or memo.due_at > now:
                self._dues.append(memo.due_at)
            elif (await self.resolve_timeout(memo)).pending:
                self._dues.append(None)
        else:
            raise ProtocolError(
                f"the SDK reported step '{memo.step_id}' again although its result was sent "
                "in the request's steps map")

    async def accept_checkpoint(self, cp: checkpoint.Checkpoint) -> int:
        """Commit the step results the SDK checkpointed during our call (lease-checked, once
        each: a result posted again is ignored). Raises LeaseLost."""
        stored = 0
        for op in cp.results:
            if op.id in self.memos:
                continue
            attempt = self._attempt(op.id)
            await self.checkpoint(checkpoint.result_memo(op, self._seq(), attempt + 1,
                                                         self.now()))
            stored += 1
            if self._checkpointed is not None:
                # Steps run one after the other in the call: each from the previous one's end.
                span, since = self._checkpointed
                self._traced(CallResult("ops", span=span), op, attempt, None, final=True,
                             started=since)
                self._checkpointed = (span, self.now())
        return stored

    async def _reload(self) -> None:
        """Re-read the run's steps after a checkpointing call: some may have been committed
        by another process that received the SDK's checkpoints."""
        run_id = self.run_id
        fresh = await self.host.read(lambda tx: tx.load_run_state(run_id))
        if fresh is not None:
            self.memos.clear()
            self.memos.update(fresh.memos)
            self.failures.clear()
            self.failures.update(fresh.failures)

    def _attempt(self, step_hash: str) -> int:
        return len(self.failures.get(step_hash, ()))

    async def _step_error(self, op: Op, error: dict[str, Any], call: CallResult | None, *,
                          retry: bool, started: int | None = None) -> None:
        attempt = self._attempt(op.id)
        retrying = retry and attempt < self.spec.retries
        due = self.retry_due(op.id, attempt + 1) if retrying else None
        await self.record_failure(op.id, op.display_name or op.id, attempt, error, next_at=due)
        self._traced(call, op, attempt, error, final=due is None, started=started)
        if due is not None:
            self._dues.append(due)
            return
        await self.checkpoint(Memo(op.id, op.display_name or op.id, "run", self._seq(),
                                   error=error, attempts=attempt + 1, started_at=self.now(),
                                   ended_at=self.now()))

    def _discovery_attempt(self) -> int:
        """A discovery call retries whichever step is in backoff, or the current unit of work
        outside steps (earlier units that went on count no more)."""
        retrying = [len(f) for h, f in self.failures.items()
                    if h not in self.memos and not h.startswith(FUNCTION_KEY)]
        return max([*retrying, self.function_attempt()])

    # --- the HTTP call -----------------------------------------------------------------------

    def _checkpointing(self, step_id: str, disable_immediate: bool) -> bool:
        return self.inflight is not None and step_id == "step" and not disable_immediate

    def _request_body(self, step_id: str, disable_immediate: bool) -> dict[str, Any]:
        steps, stack = steps_map(self.memos.values(), self.now())
        events = [e.to_dict() for e in self.state.events] or [{"name": "", "data": {}}]
        attempt = (self._attempt(step_id) if step_id != "step" else self._discovery_attempt())
        ctx = {"run_id": self.run_id, "attempt": attempt, "max_attempts": self.spec.retries + 1,
               "disable_immediate_execution": disable_immediate, "use_api": False,
               "stack": {"stack": stack, "current": len(stack)}, "env": "",
               "step_id": step_id}
        if self._checkpointing(step_id, disable_immediate):
            assert self.item_id is not None
            ctx["fn_id"] = checkpoint.function_uuid(self.fn.qualified_id)
            ctx["qi_id"] = checkpoint.DispatchRef(self.item_id, self.host.owner).encode()
        return {"event": events[0], "events": events, "steps": steps, "ctx": ctx,
                "version": 2, "use_api": False}

    async def _call(self, step_id: str, *, disable_immediate: bool) -> CallResult:
        self.trace_due_sleeps(handing_back=False)     # the app is told they are over
        body = self._request_body(step_id, disable_immediate)
        try:
            raw = canonical_json(body)
            if len(raw) > MAX_REQUEST_BYTES:
                # Too large to send inline: the SDK fetches events and memos from /v0/runs.
                body.update(events=[], steps={}, use_api=True)
                body["ctx"]["use_api"] = True
                raw = canonical_json(body)
        except ValueError as exc:
            # Not representable as the RFC 8785 JSON the SDKs verify (an integer beyond 2^53
            # that came from a native sender or a step's output): the run cannot go on, and
            # retrying cannot change that, so it fails at once instead of crashing each lease.
            return CallResult("error", retry=False, error={
                "name": "UnserializableRunState", "stack": "",
                "message": f"the run's events or step results cannot be sent to the SDK: {exc} "
                           "(JSON numbers must be within ±(2^53 - 1); send bigger ones as "
                           "strings)"})
        headers = {"content-type": "application/json", "x-run-id": self.run_id,
                   "x-inngest-req-version": "2", "x-inngest-step-id": step_id,
                   "x-inngest-server-kind": self.settings.server_kind}
        if self.settings.signing_key:
            headers["x-inngest-signature"] = sign(raw, self.settings.signing_key,
                                                  int(time.time()))
        url = with_step(self.fn.url, step_id)
        if self.settings.app_urls is not None:
            try:
                self.settings.app_urls.check(url, "step URL")
            except AppUrlNotAllowed as exc:
                return CallResult("error", retry=False, error={
                    "name": "AppUrlNotAllowed", "stack": "", "message": str(exc)})
        checkpointing = self._checkpointing(step_id, disable_immediate)
        self.host.stats.sdk_calls += 1
        started = self.now()
        span = self.host.tracing.start_call(self.state, self.fn.qualified_id, step_id,
                                            body["ctx"]["attempt"], started)
        traceparent = call_traceparent(span)
        if traceparent is not None:
            headers[TRACEPARENT] = traceparent       # the app's spans join the run's trace
        result: CallResult | None = None
        if checkpointing and span is not None:
            self._checkpointed = (span, started)
        try:
            result = await self._post(url, raw, headers, checkpointing)
            result.span, result.started = span, started
            if checkpointing and self._checkpointed is not None:
                result.started = self._checkpointed[1]   # its ops ran after the checkpoints
            return result
        finally:
            if checkpointing:
                self._checkpointed = None
            if span is not None:
                self._end_span(span, result)

    def _end_span(self, span: Any, result: CallResult | None) -> None:
        """End a call's span: its outcome, the opcodes answered, the error of a failed call
        or of a step that failed in it (None: the call was abandoned, e.g. cancelled)."""
        if result is None:
            self.host.tracing.end_call(span, self.now(), "abandoned", None, [])
            return
        ops = [op.op for op in result.ops or []]
        error = result.error if result.kind == "error" else next(
            (op.error or {} for op in result.ops or [] if op.op in ("StepError", "StepFailed")),
            None)
        self.host.tracing.end_call(span, self.now(), result.kind, error, ops)

    async def _post(self, url: str, raw: bytes, headers: dict[str, str],
                    checkpointing: bool) -> CallResult:
        if checkpointing:
            assert self.inflight is not None
            self.inflight.register(self.run_id, self)
        try:
            post = self.client.post if self.calls is None else self.calls.post
            response = await post(url, content=raw, headers=headers,
                                  timeout=self.settings.timeout_s)
        except httpx.HTTPError as exc:
            return CallResult("error", error={
                "name": "SDKUnreachable", "stack": "",
                "message": f"calling {url} failed: {type(exc).__name__}: {exc}"})
        finally:
            if checkpointing:
                assert self.inflight is not None
                self.inflight.unregister(self.run_id, self)
        result = self._classify(response, url)
        if checkpointing and result.kind == "ops" and not any(
                op.op == "RunComplete" for op in result.ops or []):
            await self._reload()
        return result

    def _classify(self, response: Reply, url: str) -> CallResult:
        now = self.now()
        if "x-inngest-sdk" not in response.headers:
            return CallResult("error", error={
                "name": "NotAnSDKResponse", "stack": "",
                "message": f"{url} answered HTTP {response.status_code} without an "
                           "x-inngest-sdk header: is an Inngest SDK app served there?"})
        status, text = response.status_code, reply_text(response)
        if status == 201:
            try:
                inner = unwrap_streamed(response, text)
            except (ValueError, KeyError, TypeError):
                return CallResult("error", error={"name": "ProtocolError", "stack": "",
                                                  "message": "malformed streamed SDK response"})
            return self._classify(inner, url)
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = text
        no_retry = response.headers.get("x-inngest-no-retry")
        if status == 200:
            return CallResult("done", output=body)
        if status == 206:
            try:
                return CallResult("ops", ops=parse_ops(body if body is not None else []),
                                  retry=no_retry != "true")
            except ProtocolError as exc:
                return CallResult("error", error={"name": "ProtocolError", "stack": "",
                                                  "message": str(exc)})
        retry = no_retry != "true" if no_retry is not None else True
        return CallResult("error", error=sdk_error(body, status), retry=retry,
                          retry_at=_retry_after(response.headers.get("retry-after"), now),
                          output_error=dict(body) if isinstance(body, dict) else None)


