"""Which functions an event triggers, and which keys index it against pending waits.

Pure: the runtime calls these inside the transaction that stores the event.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from stepwell.core.config import EventTrigger, FunctionSpec

MAX_INDEX_KEYS = 200


class Router:
    """Maps an event to the functions it triggers: exact names by dict, wildcards by prefix."""

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
        candidates += [(s, t) for prefix, s, t in self._wildcards if name.startswith(prefix)]
        out: list[FunctionSpec] = []
        for spec, trigger in candidates:
            if spec in out:
                continue
            if trigger.condition is None or trigger.condition.matches(event):
                out.append(spec)
        return out

    def subscribed(self, name: str) -> bool:
        return name in self._exact or any(name.startswith(p) for p, _, _ in self._wildcards)


def path_value(payload: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (`data.orderId`), or None when any part is missing."""
    value: Any = payload
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def match_key(path: str, value: Any) -> str:
    """The index key of a wait with `match=path` whose run's event has `value` at that path."""
    return f"{path}={json.dumps(value, sort_keys=True, separators=(',', ':'))}"


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
