"""How runs look to users: a `Run` with its step timeline, built from stored state."""

from __future__ import annotations

from stepwell.core.models import TERMINAL_STATUSES, Memo, Run, StepInfo
from stepwell.runtime.driver import FUNCTION_KEY
from stepwell.store.base import RunState


def _status(memo: Memo, run_ended_at: int | None, now: int) -> tuple[str, int | None]:
    """A step's status and end time. A run that ended while a step was still sleeping, waiting
    or invoking (it was cancelled) shows that step as interrupted at the run's end."""
    if memo.error is not None:
        return "failed", memo.ended_at
    unfinished = memo.pending or memo.sleeping(run_ended_at if run_ended_at is not None else now)
    if not unfinished:
        return "completed", memo.ended_at
    if run_ended_at is not None:
        return "interrupted", run_ended_at
    if memo.kind == "sleep":
        return "sleeping", None
    return ("waiting" if memo.kind == "wait" else "invoking"), None


def run_view(state: RunState, *, now: int) -> Run:
    row = state.run
    steps: list[StepInfo] = []
    ended_at = row.ended_at if row.status in TERMINAL_STATUSES else None
    for memo in sorted(state.memos.values(), key=lambda m: (m.seq, m.started_at)):
        if memo.kind == "input":          # a rerun's edited input, not a step of its own
            continue
        status, step_end = _status(memo, ended_at, now)
        steps.append(StepInfo(
            id=memo.step_id, kind=memo.kind, status=status, attempts=memo.attempts,
            output=memo.data, error=memo.error, started_at=memo.started_at, ended_at=step_end,
            failures=state.failures.get(memo.hash, [])))
    current_unit = f"{FUNCTION_KEY}:{len(state.memos)}"
    for step_hash, failures in state.failures.items():
        if step_hash in state.memos:
            continue
        last = failures[-1]
        handler = step_hash.startswith(FUNCTION_KEY)
        # Code outside steps fails per unit of work; an earlier unit that failed and then went
        # on (a later step was recorded) is shown as failed attempts, not as still retrying.
        status = "failed" if (handler and (step_hash != current_unit or ended_at is not None)
                              ) else "retrying"
        steps.append(StepInfo(
            id="(handler)" if handler else str(last.get("step_id", step_hash)),
            kind="run",
            status=status, attempts=len(failures), error=last.get("error"),
            started_at=int(last.get("at", 0)), failures=failures))
    return Run(id=row.id, function_id=row.function_id, status=row.status,
               event_id=row.event_ids[0] if row.event_ids else None, created_at=row.created_at,
               started_at=row.started_at, ended_at=row.ended_at, output=row.output,
               error=row.error, steps=steps, warnings=row.warnings, event_ids=row.event_ids,
               parent_run_id=row.parent_run_id, replay_of=row.replay_of, version=row.version)
