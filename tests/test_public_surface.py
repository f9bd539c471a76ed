"""The public surface, pinned: what `import stepwell` offers and what an `Engine` shows.

A name added here is a promise (docs/reference.md documents it; the API is extended, never
renamed); a name that disappears breaks users. Either must be a decision, made by
editing these lists, not a side effect of moving code around.
"""

from __future__ import annotations

from pathlib import Path

import stepwell
from stepwell import Engine

PUBLIC = [
    "App", "Batch", "Cancel", "Client", "ClientError", "Concurrency", "ConfigError", "Context",
    "Cron", "Debounce", "Engine", "Event", "FailureInfo", "Function", "InvalidEventError",
    "InvalidStepError", "NonDeterminismError", "NonRetriableError", "Priority", "RateLimit",
    "RetryAfterError", "Run", "Singleton", "Step", "StepError", "StepInfo", "SyncStep",
    "Throttle", "Timeouts", "record_model_usage",
]

# The methods the docs describe (docs/reference.md renders them from their docstrings).
ENGINE = [
    "cancel", "events", "get_event", "get_run", "idle", "metrics", "prune", "replay", "runs",
    "send", "send_signal", "start", "stop", "stream_items", "stream_token", "wait",
]


def test_stepwell_exports_exactly_the_public_names() -> None:
    assert sorted(stepwell.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(stepwell, name) is not None, name


def test_engine_shows_only_the_documented_methods(tmp_path: Path) -> None:
    assert [n for n in dir(Engine) if not n.startswith("_")] == ENGINE
    # An instance adds no public attribute: the machinery is behind `_worker`.
    engine = Engine(db=f"sqlite:///{tmp_path / 'surface.db'}")
    assert [n for n in dir(engine) if not n.startswith("_")] == ENGINE


def test_the_reference_documents_every_engine_method() -> None:
    reference = (Path(__file__).parents[1] / "docs" / "reference.md").read_text()
    [line] = [ln for ln in reference.splitlines() if ln.strip().startswith("members: [start")]
    documented = line.split("[", 1)[1].rstrip("]").split(", ")
    assert sorted(documented) == ENGINE


def test_import_stepwell_needs_no_optional_extra() -> None:
    """`stepwell.integrations.pydantic_ai` is the only module that imports Pydantic AI (the
    `pydantic-ai` extra): importing stepwell and its engine loads none of it."""
    import subprocess
    import sys

    code = ("import sys, stepwell; stepwell.Engine; stepwell.record_model_usage; "
            "import stepwell.server.app, stepwell.service; "
            "print(sorted(m for m in sys.modules if m.startswith('pydantic_ai')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
