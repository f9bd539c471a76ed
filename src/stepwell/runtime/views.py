"""How runs look to users: a `Run` with its step timeline, built from stored state."""

from __future__ import annotations

from stepwell.core.models import Run, StepInfo
from stepwell.store.base import RunState

FUNCTION_KEY = "__function__"


def _status(kind: str, pending: bool, failed: bool, due_at: int | None, now: int) -> str:
    if failed:
        return "failed"
    if pending:
        return "waiting" if kind == "wait" else "invoking"
    if kind == "sleep" and due_at is not None and due_at > now:
        return "sleeping"
    return "completed"


def run_view(state: RunState, *, now: int) -> Run:
    row = state.run
    steps: list[StepInfo] = []
    for memo in sorted(state.memos.values(), key=lambda m: (m.seq, m.started_at)):
        steps.append(StepInfo(
            id=memo.step_id, kind=memo.kind,
            status=_status(memo.kind, memo.pending, memo.error is not None, memo.due_at, now),
            attempts=memo.attempts, output=memo.data, error=memo.error,
            started_at=memo.started_at, ended_at=None if memo.pending else memo.ended_at,
            failures=state.failures.get(memo.hash, [])))
    for step_hash, failures in state.failures.items():
        if step_hash in state.memos:
            continue
        last = failures[-1]
        steps.append(StepInfo(
            id="(handler)" if step_hash == FUNCTION_KEY else step_hash, kind="run",
            status="retrying", attempts=len(failures), error=last.get("error"),
            started_at=int(last.get("at", 0)), failures=failures))
    return Run(id=row.id, function_id=row.function_id, status=row.status,
               event_id=row.event_ids[0] if row.event_ids else None, created_at=row.created_at,
               started_at=row.started_at, ended_at=row.ended_at, output=row.output,
               error=row.error, steps=steps, warnings=row.warnings, event_ids=row.event_ids,
               parent_run_id=row.parent_run_id)
