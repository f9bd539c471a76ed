"""How the server commands log: `--log-level` and `--log-format text|json`.

Text is for a person at a terminal: time, level, logger, message, then the run's context when
the record has one (`[run=... function=... step=...]`, from `ctx.logger` and stepwell's own run
lines). JSON is one object per line for log shippers: the same fields as keys, the traceback
(if any) under `exc_info`. The standard library does both; no logging dependency is needed.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, Final

LEVELS: Final = ("debug", "info", "warning", "error")
FORMATS: Final = ("text", "json")
# Structured fields stepwell puts on records (`extra=`), in the order they are shown.
CONTEXT_FIELDS: Final = ("run_id", "function_id", "step_id", "attempt", "max_attempts",
                         "next_attempt_at", "status")
_SHORT: Final = {"run_id": "run", "function_id": "function", "step_id": "step"}


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in CONTEXT_FIELDS
            if getattr(record, name, None) is not None}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = _context(record)
        shown = {k: v for k, v in context.items() if k in _SHORT}
        # stepwell's own run lines (runtime/runlog.py) already say this in words; ctx.logger
        # lines do not.
        if shown and record.module != "runlog":
            head, sep, tail = line.partition("\n")
            tags = " ".join(f"{_SHORT[k]}={v}" for k, v in shown.items())
            line = f"{head} [{tags}]{sep}{tail}"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        out: dict[str, Any] = {
            "ts": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage(), **_context(record)}
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: str = "info", fmt: str = "text") -> None:
    """Log to stderr at `level` in `fmt`; replaces any handlers on the root logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)   # one line per SDK call is noise
