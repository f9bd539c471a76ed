"""W3C trace context (`traceparent`) as stepwell carries it: in an event's `user.traceparent`
(where `send()` puts the caller's current OpenTelemetry span) and as the HTTP header on calls
to SDK apps. Pure helpers; the spans themselves are made in runtime/tracing.py."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable

from stepwell.core.models import Event

TRACEPARENT = "traceparent"           # the key in an event's `user`, and the HTTP header
_TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def parse_traceparent(value: object) -> tuple[int, int, int] | None:
    """A W3C `traceparent` (version 00) as (trace id, span id, flags), None if it is not one
    (or names the invalid all-zero ids)."""
    if not isinstance(value, str):
        return None
    found = _TRACEPARENT_RE.match(value.strip().lower())
    if found is None:
        return None
    trace_id, span_id, flags = (int(part, 16) for part in found.groups())
    return None if trace_id == 0 or span_id == 0 else (trace_id, span_id, flags)


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def caller_traceparent() -> str | None:
    """The current OpenTelemetry span of the caller as a `traceparent`, if it has one. Reads
    it only when the application imported OpenTelemetry (else it can have no span), so a
    process without it pays one dictionary lookup."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format_traceparent(ctx.trace_id, ctx.span_id, int(ctx.trace_flags))


def stamp(events: Iterable[Event], traceparent: str | None) -> None:
    """Give events without trace context this one (stored in `user.traceparent`)."""
    if traceparent is None:
        return
    for event in events:
        if TRACEPARENT not in event.user:
            event.user = {**event.user, TRACEPARENT: traceparent}
