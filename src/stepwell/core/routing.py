"""Which functions an event triggers, and which keys index it against pending waits.

Pure: the runtime calls these inside the transaction that stores the event.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from stepwell.core.config import EventTrigger, FunctionSpec
from stepwell.core.jsontext import encode_with
from stepwell.core.models import is_internal_event, is_lifecycle_event

MAX_INDEX_KEYS = 200
INTERNAL_PREFIX = "inngest/"


def wildcard_matches(prefix: str, name: str) -> bool:
    """Whether a wildcard trigger (`prefix*`) matches an event name.

    Internal events (`inngest/...`: a run's finished/failed/cancelled events, invocations,
    cron ticks) are matched only by a wildcard that names that namespace itself (`inngest/*`,
    `inngest/function.*`), never by a broader one (`*`, `i*`). Inngest's wildcards (`app/*`,
    `app/user.*`) cannot match across namespaces at all and a bare `*` matches nothing there,
    so no Inngest app relies on `*` catching `inngest/function.finished`; a function on `*`
    here means "every event of mine", and it would otherwise be triggered by its own
    `inngest/function.finished` event forever (issue 10.1)."""
    if not name.startswith(prefix):
        return False
    return not is_internal_event(name) or prefix.lower().startswith(INTERNAL_PREFIX)


class Router:
    """Maps an event to the functions it triggers: exact names by dict, wildcards by prefix.

    A run's own lifecycle events (`inngest/function.finished` etc., whose `data.function_id`
    is the function) never trigger that same function, whatever its triggers say."""

    def __init__(self, specs: Iterable[FunctionSpec]) -> None:
        self._exact: dict[str, list[tuple[FunctionSpec, EventTrigger]]] = {}
        self._wildcards: list[tuple[str, FunctionSpec, EventTrigger]] = []
        for spec in specs:
            for trigger in spec.triggers:
                if not isinstance(trigger, EventTrigger):
                    continue
                if trigger.is_wildcard:
                    self._wildcards.append((trigger.name[:-1], spec, trigger))
                else:
                    self._exact.setdefault(trigger.name, []).append((spec, trigger))

    def route(self, event: Mapping[str, Any]) -> list[FunctionSpec]:
        """Functions to start for this event, each once even if several triggers match."""
        name = event["name"]
        candidates = list(self._exact.get(name, ()))
        candidates += [(s, t) for prefix, s, t in self._wildcards
                       if wildcard_matches(prefix, name)]
        emitter = _emitter(event) if is_lifecycle_event(name) else None
        out: list[FunctionSpec] = []
        for spec, trigger in candidates:
            if spec in out or emitter in (spec.public_id, spec.qualified_id):
                continue
            if trigger.condition is None or trigger.condition.matches(event):
                out.append(spec)
        return out

    def subscribed(self, name: str) -> bool:
        return name in self._exact or any(wildcard_matches(p, name)
                                          for p, _, _ in self._wildcards)


def _emitter(event: Mapping[str, Any]) -> object:
    """The function a lifecycle event reports on (`data.function_id`)."""
    data = event.get("data")
    return data.get("function_id") if isinstance(data, Mapping) else None


def path_value(payload: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (`data.orderId`), or None when any part is missing."""
    value: Any = payload
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


# `json.dumps(value, sort_keys=True, separators=(",", ":"))`, without building an encoder per
# call: an event offers a key per leaf, so this runs for every leaf of every event ingested.
_KEY_ENCODE = encode_with(json.JSONEncoder(sort_keys=True, separators=(",", ":")))
_encode_str = getattr(json.encoder, "c_encode_basestring_ascii",
                      None) or json.encoder.encode_basestring_ascii


def match_key(path: str, value: Any) -> str:
    """The index key of a wait with `match=path` whose run's event has `value` at that path.

    The text after `=` is exactly `json.dumps(value, sort_keys=True, separators=(",", ":"))`
    (stored keys were made that way): strings and plain integers, the usual leaves, are
    written directly, as the encoder itself writes them."""
    kind = type(value)
    if kind is str:
        return f"{path}={_encode_str(value)}"
    if kind is int:
        return f"{path}={int.__repr__(value)}"
    return f"{path}={_KEY_ENCODE(value)}"


def event_match_keys(event: Mapping[str, Any]) -> list[str] | None:
    """Every key under which a wait could match this incoming event.

    A wait with `match="data.orderId"` is stored under `data.orderId=<value>`; the incoming event
    offers one key per scalar leaf, so matching is an index lookup whatever paths the waits use.
    None means the event is too large to enumerate (the caller then asks the store which paths
    are in use).
    """
    keys: list[str] = []

    def walk(prefix: str, value: Any, depth: int) -> bool:
        if isinstance(value, dict):
            if depth > 6:
                return True
            for k, v in value.items():
                if not walk(f"{prefix}.{k}" if prefix else str(k), v, depth + 1):
                    return False
            return True
        keys.append(match_key(prefix, value))
        return len(keys) <= MAX_INDEX_KEYS

    for top in ("data", "user"):
        if not walk(top, event.get(top) or {}, 1):
            return None
    for top in ("name", "id", "ts"):
        keys.append(match_key(top, event.get(top)))
    return keys
