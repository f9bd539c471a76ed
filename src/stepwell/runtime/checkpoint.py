"""Checkpointing: how TypeScript SDK apps (v4, and v3 >= 3.51) run many steps in one call.

Without it every step costs an HTTP round trip: the server calls the app, the SDK runs one step
and answers 206 with its result, the server commits it and calls again. With it the server's
call carries `ctx.fn_id` and `ctx.qi_id` (the queue item being worked on); the SDK then runs
the steps it reaches one after the other *inside that one call* and, after each, POSTs the
step's result to `POST /v1/checkpoint/{run_id}/async` before going on. The call ends with a 206
holding whatever is left: `RunComplete` (the function's return value), or a step the SDK cannot
run by itself (a sleep, a wait, parallel steps, a failed step), handled as usual.

What this module guarantees is what every other commit does: a checkpointed step result is
committed exactly once, and only while the worker that made the call still holds the run's
queue item. Each checkpoint compare-and-sets that lease (`scripts.hold`); a worker that lost it
(the run was cancelled, or the worker presumed dead) gets `409`, which tells the SDK to stop
running steps (its `StaleDispatchError`). A step posted twice (the SDK retries a checkpoint whose
answer it did not get) is stored once and the second post answers 200.

`qi_id` names the item and its holder (`<item id>.<owner>`), so a checkpoint that reaches
another process (several `stepwell serve` behind one address) is still checked against the
right lease; the calling executor re-reads the run's steps after such a call.

Only step results may be checkpointed (StepRun; StepPlanned is a progress notice and is ignored),
as on Inngest's server: anything else is refused with 400 naming the opcode. Durable endpoints
(`inngest.endpoint()`, the synchronous `POST /v1/checkpoint` and `.../steps`) are not supported.
See docs/checkpointing.md and shared/reference/inngest-protocol.md, section 2.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stepwell.core.models import Memo
from stepwell.core.protocol import Op, ProtocolError, parse_ops
from stepwell.runtime import scripts
from stepwell.runtime.scripts import Effects, LeaseLost, Placement
from stepwell.store.base import RunState, Tx

if TYPE_CHECKING:
    from stepwell.runtime.remote import RemoteExecutor

# Opcodes a checkpoint may carry. StepPlanned announces a step about to run (Inngest opens a
# span for it); stepwell has nothing to record until the result arrives.
RESULT_OPS = frozenset({"StepRun", "Step"})
NOTICE_OPS = frozenset({"StepPlanned"})
_FN_NAMESPACE = uuid.UUID("6c1f4d0e-3b7a-4c36-9d0e-5f2b8a1c7e90")


class CheckpointError(Exception):
    """A checkpoint that cannot be applied; `status` is the HTTP answer."""

    status = 400


class StaleDispatch(CheckpointError):
    """The call the checkpoint belongs to no longer holds the run (409: the SDK stops)."""

    status = 409


class UnknownRun(CheckpointError):
    status = 404


@functools.lru_cache(maxsize=1024)
def function_uuid(qualified_id: str) -> str:
    """The `ctx.fn_id` sent to the SDK: Inngest sends its function UUID; the SDK only echoes
    it back, so a stable UUID derived from the function's id does (cached: it is in every
    checkpointing request, and uuid5 hashes each time)."""
    return str(uuid.uuid5(_FN_NAMESPACE, qualified_id))


@dataclass(frozen=True)
class DispatchRef:
    """The queue item a call works on and the worker holding it: `ctx.qi_id`."""

    item_id: int
    owner: str

    def encode(self) -> str:
        return f"{self.item_id}.{self.owner}"

    @classmethod
    def decode(cls, raw: object) -> DispatchRef:
        item, sep, owner = str(raw).partition(".") if isinstance(raw, str) else ("", "", "")
        if not sep or not item.isdigit() or not owner:
            raise CheckpointError(f"'qi_id' must be the ctx.qi_id of the call being "
                                  f"checkpointed, got {raw!r}")
        return cls(int(item), owner)


@dataclass(frozen=True)
class Checkpoint:
    run_id: str
    ref: DispatchRef
    ops: list[Op]

    @property
    def results(self) -> list[Op]:
        return [op for op in self.ops if op.op in RESULT_OPS]


def parse_checkpoint(run_id: str, body: object) -> Checkpoint:
    """Validate a `POST /v1/checkpoint/{run_id}/async` body (fields as the TS SDK sends them:
    run_id, fn_id, qi_id, request_id, generation_id, request_started_at, steps, ts)."""
    if not isinstance(body, Mapping):
        raise CheckpointError("the checkpoint body must be a JSON object")
    if body.get("run_id") not in (None, run_id):
        raise CheckpointError(f"the body's run_id {body.get('run_id')!r} is not the run in the "
                              f"URL ({run_id!r})")
    ref = DispatchRef.decode(body.get("qi_id"))
    steps = body.get("steps")
    if not isinstance(steps, list):
        raise CheckpointError("'steps' must be an array of step opcodes")
    try:
        ops = parse_ops(steps) if steps else []
    except ProtocolError as exc:
        raise CheckpointError(str(exc)) from None
    for op in ops:
        if op.op not in RESULT_OPS | NOTICE_OPS:
            raise CheckpointError(f"cannot checkpoint opcode {op.op} (step {op.id}): only step "
                                  "results (StepRun) may be checkpointed; report it in the "
                                  "call's response")
    return Checkpoint(run_id, ref, ops)


def result_memo(op: Op, seq: int, attempts: int, now: int) -> Memo:
    """The memo a checkpointed (or reported) step result is stored as."""
    return Memo(op.id, op.display_name or op.id, "run", seq, data=op.data, attempts=attempts,
                started_at=now, ended_at=now)


class Inflight:
    """The SDK calls this process is making that may be checkpointed, by run id: a checkpoint
    for one of them is applied through its executor (the same lease check, and the executor's
    view of the run stays current)."""

    def __init__(self) -> None:
        self._calls: dict[str, RemoteExecutor] = {}
        self.checkpoints = 0          # checkpoint requests applied by this process
        self.steps = 0                # step results they committed

    def register(self, run_id: str, executor: RemoteExecutor) -> None:
        self._calls[run_id] = executor

    def unregister(self, run_id: str, executor: RemoteExecutor) -> None:
        if self._calls.get(run_id) is executor:
            del self._calls[run_id]

    def get(self, run_id: str) -> RemoteExecutor | None:
        return self._calls.get(run_id)


def commit_elsewhere(checkpoint: Checkpoint, now: int, lease_until: int
                     ) -> Any:
    """The transaction script for a checkpoint whose call another process is making: hold
    that process's lease (compare-and-set), then insert each new step result. Returns the
    run's state as loaded and the memos stored; raises LeaseLost (-> 409) or UnknownRun."""
    run_id, ref, results = checkpoint.run_id, checkpoint.ref, checkpoint.results

    def script(tx: Tx, place: Placement, effects: Effects) -> tuple[RunState, list[Memo]]:
        scripts.hold(tx, ref.item_id, ref.owner, lease_until)
        state = tx.load_run_state(run_id)
        if state is None:
            raise UnknownRun(f"no run {run_id!r}")
        stored: list[Memo] = []
        seq = len(state.memos)
        for op in results:
            if op.id in state.memos:
                continue                        # posted again: stored once
            attempts = len(state.failures.get(op.id, ())) + 1
            memo = result_memo(op, seq, attempts, now)
            if tx.insert_memo(run_id, memo):
                stored.append(memo)
                seq += 1
        return state, stored

    return script


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "DispatchRef",
    "Inflight",
    "LeaseLost",
    "StaleDispatch",
    "UnknownRun",
    "commit_elsewhere",
    "function_uuid",
    "parse_checkpoint",
    "result_memo",
]
