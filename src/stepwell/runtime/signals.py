"""Signals: a step waits for a named signal (TS `step.waitForSignal`) until someone sends it
(`POST /v1/signals`, `step.sendSignal`, `engine.send_signal`) or its timeout passes.

A signal is addressed by name, not matched against a condition, so at most one wait holds a
name at a time. A signal wait is a row of the `waits` table like an event wait (its timeout,
its removal when the run ends or is cancelled, and its memo resolution are shared), with
`kind="signal"`, the signal's name in `match_key`, and the empty string as its event name:
no event can have an empty name, so event processing never sees these rows, and the lookup by
name uses the `(event_name, match_key)` index.

Semantics (Inngest's, as the TS SDK documents them):
- a second wait for a name held by another wait either `replace`s it (the old wait stays
  pending until its timeout, then resolves to null) or `fail`s its own step;
- a sent signal resolves the wait holding the name with `{"signal": name, "data": data}` and
  returns its run id; with nobody waiting it returns None (HTTP 404, which the SDK reports as
  `{runId: undefined}`); the signal is not stored for a later wait.
"""

from __future__ import annotations

from typing import Any

from stepwell.runtime.scripts import Effects, Placement, enqueue_exec
from stepwell.store.base import Tx, WaitRow

SIGNAL_WAIT_KIND = "signal"
SIGNAL_EVENT_NAME = ""


def signal_wait(run_id: str, step_hash: str, signal: str, expires_at: int) -> WaitRow:
    return WaitRow(run_id=run_id, kind=SIGNAL_WAIT_KIND, event_name=SIGNAL_EVENT_NAME,
                   expires_at=expires_at, step_hash=step_hash, match_key=signal)


def live_waits(tx: Tx, signal: str, now: int) -> list[WaitRow]:
    """Waits holding `signal` whose timeout has not passed, oldest first."""
    return [w for w in tx.find_waits(SIGNAL_EVENT_NAME, [signal])
            if w.kind == SIGNAL_WAIT_KIND and w.match_key == signal
            and (w.expires_at is None or w.expires_at >= now)]


def conflicts(tx: Tx, wait: WaitRow, now: int) -> list[WaitRow]:
    """Other live waits for the same signal as `wait` (another run, or another step)."""
    assert wait.match_key is not None
    return [w for w in live_waits(tx, wait.match_key, now)
            if (w.run_id, w.step_hash) != (wait.run_id, wait.step_hash)]


def conflict_error(signal: str, holders: list[WaitRow]) -> dict[str, Any]:
    runs = ", ".join(sorted({w.run_id for w in holders}))
    return {"name": "SignalConflictError", "stack": "",
            "message": f"run {runs} is already waiting for signal '{signal}' (onConflict: "
                       "'fail'); use onConflict: 'replace' to take the signal over"}


def hold(tx: Tx, wait: WaitRow, replaced: list[WaitRow]) -> None:
    """Register `wait`, taking the name from `replaced` (their memos stay pending until their
    own timeouts resolve them to null)."""
    for other in replaced:
        tx.delete_wait(other.id)
    tx.insert_wait(wait)


def deliver(tx: Tx, signal: str, data: Any, now: int, place: Placement,
            effects: Effects) -> str | None:
    """Resolve the wait holding `signal` and queue its run; its run id, or None if no live
    wait holds the name. The newest wait wins should two ever hold it (a replace racing a
    wait on another worker)."""
    for wait in reversed(live_waits(tx, signal, now)):
        if not tx.delete_wait(wait.id):
            continue
        outcome = {"data": {"signal": signal, "data": data}}
        if wait.step_hash is not None and tx.resolve_memo(wait.run_id, wait.step_hash,
                                                          outcome, now):
            effects.resolved.append((wait.run_id, wait.step_hash))
            enqueue_exec(tx, wait.run_id, now, place, effects)
            return wait.run_id
    return None
