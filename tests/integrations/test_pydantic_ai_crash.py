"""A durable Pydantic AI agent with a tool and a human approval survives SIGKILLs of its worker
process (SQLite): killed during a model request, then while waiting for the approval, it
completes once approved, and no model call, tool call or notice that had completed runs again
(`pydantic_ai_worker.py` counts them in an append-only journal)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integrations.agent_models import Journal

WORKER = Path(__file__).with_name("pydantic_ai_worker.py")


def incarnation(tmp_path: Path, phase: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(WORKER), str(tmp_path / "stepwell.db"),
                           str(tmp_path / "journal.log"), phase],
                          capture_output=True, text=True, timeout=120)


def test_the_agent_resumes_after_sigkills_without_repeating_completed_calls(
        tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.log")
    killed = incarnation(tmp_path, "kill-in-model")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert journal.lines() == ["model:0", "tool:lookup", "model:1"]

    killed = incarnation(tmp_path, "kill-in-wait")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    lines = journal.lines()
    # Only the model call that was in flight at the kill ran again.
    assert lines[:4] == ["model:0", "tool:lookup", "model:1", "model:1"]
    assert [line.split(":")[0] for line in lines[4:]] == ["notify"]

    done = incarnation(tmp_path, "approve")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed"
    assert result["output"] == "done: refunded order 7"
    assert journal.lines()[5:] == ["tool:refund", "model:2"], (result, done.stderr)
    assert sum(line.startswith("notify:") for line in journal.lines()) == 1
    # Tokens: the three model requests that completed (the killed one reported none).
    assert result["usage"]["requests"] == 3
    assert (result["usage"]["input_tokens"], result["usage"]["output_tokens"]) == (300, 30)
