"""A run's recorded history as a file, and replaying it against (new) code.

`stepwell runs export RUN` writes a run's history, self-contained: its events, every step's
recorded outcome (memo), the failed attempts, its status and timings. The same shape is what
`stepwell check` replays from a database or from a folder of exported files before a deploy,
and what `stepwell.testing.replay` re-runs under pytest or a debugger. Replaying never calls a
step body: each recorded step returns its recorded result, so a replay has no side effects and
runs thousands of histories a second; what it checks is that the code reaches the same steps,
in the same order, with the same arguments (`determinism.ReplayCheck`, strict).
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepwell.core.models import TERMINAL_STATUSES, Event, Memo
from stepwell.runtime.determinism import (
    Divergence,
    ReplayCheck,
    ReplayEnd,
    ran_in_parallel,
    replay_handler,
)
from stepwell.runtime.session import run_context
from stepwell.sdk.step import StepDriver
from stepwell.store.base import RunState

if TYPE_CHECKING:
    from stepwell.sdk.app import Function

FORMAT = "stepwell/run-history"
FORMAT_VERSION = 1
_MEMO_FIELDS = {f.name for f in dataclasses.fields(Memo)}


class HistoryError(ValueError):
    """A history file that is not one (names the file and what is wrong)."""


@dataclass(slots=True)
class History:
    """One run as recorded: enough to replay it anywhere, no database needed."""

    run_id: str
    function_id: str
    status: str
    events: list[Event]
    memos: dict[str, Memo]
    failures: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    created_at: int = 0
    started_at: int | None = None
    ended_at: int | None = None
    output: Any = None
    error: dict[str, Any] | None = None
    version: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_state(cls, state: RunState) -> History:
        run = state.run
        return cls(run_id=run.id, function_id=run.function_id, status=run.status,
                   events=list(state.events), memos=dict(state.memos),
                   failures=dict(state.failures), created_at=run.created_at,
                   started_at=run.started_at, ended_at=run.ended_at, output=run.output,
                   error=run.error, version=run.version)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "run": {"id": self.run_id, "function_id": self.function_id, "status": self.status,
                    "created_at": self.created_at, "started_at": self.started_at,
                    "ended_at": self.ended_at, "output": self.output, "error": self.error,
                    "version": self.version},
            "events": [event.to_dict() for event in self.events],
            "steps": [dataclasses.asdict(memo)
                      for memo in sorted(self.memos.values(), key=lambda m: m.seq)],
            "failures": self.failures,
        }

    @classmethod
    def from_json(cls, data: object, *, where: str = "history") -> History:
        """Parse an exported history; HistoryError names what is wrong."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise HistoryError(f"{where}: not a stepwell run history (no \"format\": "
                               f"\"{FORMAT}\"; write one with `stepwell runs export RUN`)")
        if data.get("format_version") != FORMAT_VERSION:
            raise HistoryError(f"{where}: format_version {data.get('format_version')!r} is "
                               f"not supported (this stepwell reads {FORMAT_VERSION})")
        try:
            run = data["run"]
            memos = {}
            for step in data["steps"]:
                memo = Memo(**{k: v for k, v in step.items() if k in _MEMO_FIELDS})
                memos[memo.hash] = memo
            return cls(run_id=str(run["id"]), function_id=str(run["function_id"]),
                       status=str(run["status"]),
                       events=[Event.from_dict(e) for e in data["events"]], memos=memos,
                       failures=dict(data.get("failures") or {}),
                       created_at=int(run.get("created_at") or 0),
                       started_at=run.get("started_at"), ended_at=run.get("ended_at"),
                       output=run.get("output"), error=run.get("error"),
                       version=run.get("version"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise HistoryError(f"{where}: malformed run history ({type(exc).__name__}: "
                               f"{exc})") from None


def read_history(path: str | Path) -> History:
    """An exported history file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise HistoryError(f"{path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise HistoryError(f"{path}: not JSON ({exc})") from None
    return History.from_json(data, where=str(path))


@dataclass(slots=True)
class Replayed:
    """One history replayed against the code: the divergence, if any, and how it ended."""

    history: History
    divergence: Divergence | None
    end: ReplayEnd
    steps_replayed: int


async def replay_history(fn: Function, history: History, pool: Executor, *,
                         execute: StepDriver | None = None) -> Replayed:
    """Replay `history` against `fn` strictly (inserted and removed steps count), calling no
    recorded step's body; with `execute`, steps past the recorded end go to that driver."""
    ctx = run_context(fn, history.events, history.run_id, attempt=lambda: 0,
                      replaying=lambda: True)
    check = ReplayCheck(history.memos, {}, ordered=not ran_in_parallel(history.memos),
                        strict=True, execute=execute)
    end = await replay_handler(fn, ctx, check, pool)
    return Replayed(history, check.found, end, check.replayed)
