"""How big an event is, and how the engine keeps the events it emits within the limit.

Every stored event obeys `MAX_EVENT_BYTES` (3 MiB, Inngest's absolute event limit). Events from
users are refused above it; events the engine emits itself (`inngest/function.finished` and
friends embed the run's triggering event and its output or error, which can each be large) are
made to fit instead: the largest of those parts is replaced by a small reference to the run,
whose output and error stay readable in full through `GET /v1/runs/{id}` or `engine.get_run`.
(Inngest publishes these events without a size check; a stored event past the limit is what
let one self-triggering function grow a database to 1.6 GB.)
"""

from __future__ import annotations

import json
from typing import Any

from stepwell.core.models import MAX_EVENT_BYTES, InvalidEventError

# The parts of a lifecycle event's `data` that may be replaced by a reference, largest first.
_SHRINKABLE = ("result", "error", "event")


_MEASURED = ("name", "data", "user")


def event_size(payload: dict[str, Any]) -> int:
    """The size of an event: the compact JSON encoding (UTF-8 bytes) of its name, data and user
    fields. Its `id` and `ts` have limits of their own and may be filled in by the server, so
    an event that fitted in the 3 MiB request body it came in always fits here too."""
    return json_size({k: payload[k] for k in _MEASURED if payload.get(k) or k == "name"})


def json_size(value: Any) -> int:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return len(text.encode("utf-8", "surrogatepass"))


def check_event_size(payload: dict[str, Any]) -> None:
    """Refuse an event over the limit, saying how big it is and what is allowed."""
    size = event_size(payload)
    if size > MAX_EVENT_BYTES:
        raise InvalidEventError(
            f"event '{payload.get('name')}' is {size} bytes; at most {MAX_EVENT_BYTES} bytes "
            "(3 MiB) are allowed per event: send a reference (an id, a URL) to large data")


def reference(part: str, size: int, run_id: str) -> dict[str, Any]:
    return {"_stepwell_truncated": True, "bytes": size,
            "message": f"the run's {part} is {size} bytes, too large to embed in this event "
                       f"(events are limited to {MAX_EVENT_BYTES} bytes); read it from the "
                       f"run: GET /v1/runs/{run_id}"}


def fit_lifecycle(name: str, data: dict[str, Any], run_id: str,
                  limit: int = MAX_EVENT_BYTES) -> dict[str, Any]:
    """`data` of a lifecycle event, with its largest parts replaced by references until the
    whole event fits in `limit` bytes."""
    headroom = 512           # id, ts, name and the envelope around `data`
    if event_size({"name": name, "data": data}) + headroom <= limit:
        return data
    out = dict(data)
    sizes = sorted(((json_size(out[k]), k) for k in _SHRINKABLE if k in out),
                   reverse=True)
    for size, key in sizes:
        out[key] = reference(key, size, run_id)
        if event_size({"name": name, "data": out}) + headroom <= limit:
            break
    return out
